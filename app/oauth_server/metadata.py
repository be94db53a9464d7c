"""Discovery documents: RFC 8414 authorization server metadata and RFC 9728 protected resource
metadata for /mcp and /mcp/<name>, and the ``WWW-Authenticate`` challenge that points a client
at the latter. Every URL is built from PORTCULLIS_BASE_URL, which is the issuer byte for byte."""
from __future__ import annotations

import re

from flask import current_app

from .tokens import SCOPE

SERVER_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")  # the MCP server name rule (app/ops/fields.py)
PRM_PATH = "/.well-known/oauth-protected-resource"
AS_PATH = "/.well-known/oauth-authorization-server"


def issuer() -> str:
    return current_app.config["PORTCULLIS_BASE_URL"]


def resource_url(server_name: str | None) -> str:
    """The canonical URL of /mcp or /mcp/<name>: the RFC 8707 resource and the tokens' aud."""
    return issuer() + "/mcp" + (f"/{server_name}" if server_name else "")


def metadata_url(server_name: str | None) -> str:
    return issuer() + PRM_PATH + "/mcp" + (f"/{server_name}" if server_name else "")


def resource_allowed(resource: str | None) -> bool:
    """One of Portcullis's MCP endpoints (a well-formed server name; whether it exists is not
    told before sign-in)."""
    if not isinstance(resource, str):
        return False
    base = resource_url(None)
    if resource == base:
        return True
    return resource.startswith(base + "/") and SERVER_NAME_RE.match(resource[len(base) + 1:]) is not None


def challenge(server_name: str | None, error: str | None = None, description: str | None = None) -> str:
    """The WWW-Authenticate value of a 401/403 from /mcp (RFC 6750 §3, RFC 9728 §5.1)."""
    parts = [f'resource_metadata="{metadata_url(server_name)}"', f'scope="{SCOPE}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace("\\", "").replace('"', "'") + '"')
    return "Bearer " + ", ".join(parts)


def protected_resource(server_name: str | None) -> dict:
    return {
        "resource": resource_url(server_name),
        "authorization_servers": [issuer()],
        "scopes_supported": [SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": "Portcullis MCP gateway" + (f" ({server_name})" if server_name else ""),
    }


def authorization_server() -> dict:
    base = issuer()
    return {
        "issuer": base,
        "authorization_endpoint": base + "/oauth/authorize",
        "token_endpoint": base + "/oauth/token",
        "registration_endpoint": base + "/oauth/register",
        "revocation_endpoint": base + "/oauth/revoke",
        "jwks_uri": base + "/oauth/jwks",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": [SCOPE],
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }
