"""OAuth clients: those registered dynamically (RFC 7591) and those identified by a client ID
metadata document (CIMD: a ``client_id`` that is an HTTPS URL whose JSON describes the client).

A metadata document is fetched with a size and time limit, over TLS verified with the system's
trust store (and SSL_CERT_FILE when set), never from a loopback, private or link-local address
(server-side request forgery) unless PORTCULLIS_CIMD_ALLOW_LOOPBACK allows 127.0.0.1/localhost
for development and tests. The connection goes to the address that was checked (no second DNS
lookup an attacker could answer differently). Documents are cached in the clients table and
read again after CIMD_TTL.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import ssl
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError
from flask import current_app
from sqlalchemy import select

from .. import netguard
from ..audit import record
from ..extensions import db
from ..models import OAuthClient
from ..models.base import utcnow
from ..models.oauth import loopback_redirect

log = logging.getLogger(__name__)
CIMD_TTL = timedelta(hours=1)
CIMD_MAX_BYTES = 64 * 1024
CIMD_TIMEOUT = 5.0
MAX_REDIRECT_URIS = 20
MAX_URI = 2048
GRANT_TYPES = ("authorization_code", "refresh_token")
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")


class InvalidClientMetadata(InvalidClientMetadataError):
    def __init__(self, description: str):
        super().__init__(description=description)


def _string(data: dict, name: str, max_len: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or any(c in value for c in "\r\n\x00"):
        raise InvalidClientMetadata(f"{name} must be a string of at most {max_len} characters")
    return value.strip()


HOST_RE = re.compile(r"^([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])$")  # a DNS name or an IP literal


def redirect_origin(uri: str) -> str | None:
    """``scheme://host[:port]`` of a redirect URI, for the consent page's policy; None when the
    host is not a plain DNS name or IP literal (such URIs are never registered)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2].rsplit(":", 1)[0] if port else parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https") or not HOST_RE.match(host.lower()):
        return None
    return f"{parts.scheme}://{host.lower()}" + (f":{port}" if port else "")


def _redirect_uri_ok(uri) -> bool:
    if not isinstance(uri, str) or len(uri) > MAX_URI or not uri.isprintable() or " " in uri:
        return False
    parts = urlsplit(uri)
    if parts.fragment or parts.username or parts.password or not parts.hostname:
        return False
    if redirect_origin(uri) is None:
        return False
    return parts.scheme == "https" or loopback_redirect(uri)


def validate_metadata(data: dict, *, cimd: bool = False) -> dict:
    """The client metadata Portcullis keeps, from a registration request or a metadata
    document; ``InvalidClientMetadata`` (RFC 7591 ``invalid_client_metadata``) otherwise."""
    uris = data.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
        raise InvalidClientMetadata(f"redirect_uris must be a list of 1 to {MAX_REDIRECT_URIS} URIs")
    bad = [u for u in uris if not _redirect_uri_ok(u)]
    if bad:
        raise InvalidClientMetadata("redirect_uris must be https:// URIs, or http:// to a loopback address "
                                    "(127.0.0.1, [::1], localhost), without fragment or user info")
    grant_types = data.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not grant_types or not set(grant_types) <= set(GRANT_TYPES) \
            or "authorization_code" not in grant_types:
        raise InvalidClientMetadata("grant_types must include authorization_code and may add refresh_token")
    response_types = data.get("response_types", ["code"])
    if response_types != ["code"]:
        raise InvalidClientMetadata("response_types must be code only")
    method = data.get("token_endpoint_auth_method", "none" if cimd else "client_secret_basic")
    allowed = ("none",) if cimd else AUTH_METHODS
    if method not in allowed:
        raise InvalidClientMetadata("token_endpoint_auth_method must be one of " + ", ".join(allowed))
    scope = data.get("scope")
    if scope is not None and (not isinstance(scope, str) or set(scope.split()) - {"mcp"}):
        raise InvalidClientMetadata("scope may only be mcp")
    client_uri = _string(data, "client_uri", MAX_URI)
    if client_uri and urlsplit(client_uri).scheme not in ("https", "http"):
        raise InvalidClientMetadata("client_uri must be an http(s) URL")
    return {
        "redirect_uris": list(dict.fromkeys(uris)), "grant_types": list(dict.fromkeys(grant_types)),
        "response_types": ["code"], "token_endpoint_auth_method": method,
        "client_name": _string(data, "client_name", 200) or "", "client_uri": client_uri, "scope": "mcp",
    }


def find(client_id) -> OAuthClient | None:
    """Authlib's query_client: a registered client, or a metadata document's (fetched or
    re-read when older than CIMD_TTL). None when unknown or unusable."""
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_URI or not client_id.isprintable():
        return None  # (a NUL would reach the database, which refuses it)
    client = db.session.scalar(select(OAuthClient).where(OAuthClient.client_id == client_id))
    if not client_id.startswith("https://"):
        return client if client is not None and client.kind == "dcr" else None
    if client is not None and client.fetched_at is not None and utcnow() - client.fetched_at < CIMD_TTL:
        return client
    try:
        metadata = validate_metadata(fetch_document(client_id), cimd=True)
    except (CimdError, InvalidClientMetadataError) as e:
        log.warning("client metadata document %s refused: %s", client_id[:200], getattr(e, "description", e))
        return None
    created = client is None
    if created:
        client = OAuthClient(client_id=client_id, kind="cimd")
        db.session.add(client)
    for name, value in metadata.items():
        setattr(client, name, value)
    client.fetched_at = utcnow()
    db.session.flush()
    if created:
        record("oauth_client.discover", client, "client ID metadata document",
               target_name=client.client_name or client_id[:200])
    db.session.commit()
    return client


class CimdError(Exception):
    """A client ID metadata document that cannot be used; the message names why."""


def _addresses(host: str, port: int) -> list[str]:
    addresses = netguard.resolve(host, port)
    if not addresses:
        raise CimdError("the host does not resolve")
    return addresses


def _allowed_address(address: str, host: str) -> bool:
    """Public addresses only (app/netguard.py); loopback for local tests when configured."""
    if ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return current_app.config["PORTCULLIS_CIMD_ALLOW_LOOPBACK"] and host in ("127.0.0.1", "localhost", "::1")
    return netguard.is_public(address)


def tls_context() -> ssl.SSLContext:
    """The system's trust store, plus SSL_CERT_FILE when set."""
    context = ssl.create_default_context()
    extra = os.environ.get("SSL_CERT_FILE")
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


def fetch_document(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password or parts.fragment:
        raise CimdError("a client_id URL must be https without user info or fragment")
    if not parts.path or parts.path == "/":
        raise CimdError("a client_id URL must have a path")
    host, port = parts.hostname, parts.port or 443
    addresses = _addresses(host, port)
    if not addresses or not all(_allowed_address(a, host) for a in addresses):
        raise CimdError("the host resolves to a loopback, private or link-local address")
    address = addresses[0]
    target = f"[{address}]" if ":" in address else address
    request_url = parts._replace(netloc=f"{target}:{port}").geturl()
    headers = {"Host": parts.netloc, "Accept": "application/json"}
    try:
        with httpx.Client(verify=tls_context(), timeout=CIMD_TIMEOUT, follow_redirects=False,
                          trust_env=False) as http:
            with http.stream("GET", request_url, headers=headers, extensions={"sni_hostname": host}) as resp:
                if resp.status_code != 200:
                    raise CimdError(f"the document answered HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > CIMD_MAX_BYTES:
                        raise CimdError(f"the document is larger than {CIMD_MAX_BYTES} bytes")
    except httpx.HTTPError as e:
        raise CimdError(f"the document could not be fetched ({type(e).__name__})") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise CimdError("the document is not JSON") from None
    if not isinstance(data, dict) or data.get("client_id") != url:
        raise CimdError("the document's client_id must equal its URL")
    return data
