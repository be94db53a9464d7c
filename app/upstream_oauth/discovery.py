"""Finding an upstream's authorization server as MCP clients do: call the upstream without a
token, read ``resource_metadata`` from its 401's ``WWW-Authenticate`` (RFC 9728), fetch that
document (or the well-known ones), then the authorization server's RFC 8414 metadata (or
OpenID discovery). An admin-entered ``authorization_server`` skips the first steps.

The candidate URLs and the metadata types are the ``mcp`` SDK's; every fetch is a plain GET
with timeouts, no redirects and a size cap. Errors are ``DiscoveryError`` with a message safe to
show an admin (URLs and statuses, never a secret)."""
from __future__ import annotations

import json

import httpx
from mcp.client.auth.utils import (build_oauth_authorization_server_metadata_discovery_urls,
                                   build_protected_resource_metadata_discovery_urls, issuers_match)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from pydantic import ValidationError

from .. import netguard
from ..upstream.client import CLIENT_INFO

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_DOCUMENT = 256 * 1024


class DiscoveryError(Exception):
    """The upstream's authorization server could not be found or used; ``str()`` is safe."""


def http(guard: netguard.Guard | None = None) -> httpx.Client:
    """A client for the authorization server's endpoints: timeouts, no redirects, no cookies
    kept between uses (a new one per use), no environment proxies. With ``guard``, each request
    is checked again as it is sent and goes to the address that passed (DNS rebinding)."""
    transport = httpx.HTTPTransport(trust_env=False)
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False,
                        transport=guard.transport(transport) if guard is not None else transport)


def _challenge(url: str) -> str | None:
    """The WWW-Authenticate of the upstream's answer to an initialize without a token."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": CLIENT_INFO.model_dump(mode="json", exclude_none=True)}}
    try:
        with http() as client:
            r = client.post(url, json=body, headers={"Accept": "application/json, text/event-stream"})
    except httpx.HTTPError as e:
        raise DiscoveryError(f"the upstream is unreachable ({type(e).__name__})") from None
    if r.status_code in (401, 403):
        return r.headers.get("www-authenticate")
    return None


def challenge_param(challenge: str | None, name: str) -> str | None:
    """One parameter of a ``WWW-Authenticate: Bearer ...`` value (the SDK's parser)."""
    from mcp.client.auth.utils import extract_field_from_www_auth

    class _Answer:  # the SDK's parser reads .headers of a response
        headers = {"WWW-Authenticate": challenge} if challenge else {}
    return extract_field_from_www_auth(_Answer(), name)  # type: ignore[arg-type]


def _get_json(client: httpx.Client, url: str) -> dict | None:
    try:
        r = client.get(url, headers={"Accept": "application/json", "MCP-Protocol-Version": "2025-11-25"})
    except netguard.RefusedConnect as e:  # checked, then resolved elsewhere when sent: hostile
        raise DiscoveryError(f"refused: {e}") from None
    except httpx.HTTPError:
        return None
    if r.status_code != 200 or len(r.content) > MAX_DOCUMENT:
        return None
    try:
        doc = json.loads(r.content)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _guarded(guard: netguard.Guard, url: str, what: str) -> str:
    try:
        guard.check(url, what)
    except netguard.Refused as e:
        raise DiscoveryError(f"refused: {e}") from None
    return url


def discover(server_url: str, authorization_server: str | None = None) -> dict:
    """{"resource", "guarded_by" (the URL whose address decides where the endpoints may point:
    the upstream's, or the admin-entered authorization server's), "guarded_private" (whether that
    address was private then: kept, so a later answer of its DNS cannot widen the policy),
    "resource_metadata" (or None),
    "metadata" (RFC 8414 fields), "scope" (the challenge's, or None)}; raises DiscoveryError.

    SSRF (app/netguard.py): every URL the upstream or its metadata names is checked before it is
    fetched or stored: a public upstream cannot point Portcullis at loopback, private or
    link-local addresses, nor at plain http. An admin-entered authorization server is the
    admin's word: its metadata is fetched as entered and the endpoints it names are held to the
    policy of its own address."""
    resource_metadata, scope = None, None
    guard = netguard.Guard(server_url)
    with http(guard) as client, http() as entered:
        if authorization_server is None:
            challenge = _challenge(server_url)
            scope = challenge_param(challenge, "scope")
            for url in build_protected_resource_metadata_discovery_urls(
                    challenge_param(challenge, "resource_metadata"), server_url):
                doc = _get_json(client, _guarded(guard, url, "the protected resource metadata URL"))
                if doc is None:
                    continue
                try:
                    resource_metadata = ProtectedResourceMetadata.model_validate(doc)
                    break
                except ValidationError:
                    continue
            if resource_metadata is None or not resource_metadata.authorization_servers:
                raise DiscoveryError("the upstream names no authorization server (no RFC 9728 protected resource "
                                     "metadata); enter the authorization server in the server's OAuth settings")
            authorization_server = str(resource_metadata.authorization_servers[0])
            discovered = True
        else:
            guard, discovered = netguard.Guard(authorization_server), False
        metadata = None
        for url in build_oauth_authorization_server_metadata_discovery_urls(authorization_server, server_url):
            doc = _get_json(client, _guarded(guard, url, "the authorization server metadata URL")) if discovered \
                else _get_json(entered, url)  # the admin's word: fetched as entered
            if doc is None:
                continue
            try:
                candidate = OAuthMetadata.model_validate(doc)
            except ValidationError:
                continue
            if not isinstance(doc.get("issuer"), str) or not issuers_match(doc["issuer"], authorization_server):
                raise DiscoveryError(f"the metadata at {url} names another issuer ({candidate.issuer})")
            metadata = doc  # as sent: the issuer is compared byte for byte later (RFC 9207)
            break
    if metadata is None:
        raise DiscoveryError(f"no OAuth or OpenID metadata found for the authorization server {authorization_server}")
    if "S256" not in (metadata.get("code_challenge_methods_supported") or ()):  # MCP: no PKCE S256, no go
        raise DiscoveryError("the upstream's authorization server does not support PKCE S256")
    for name in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(metadata.get(name), str):
            raise DiscoveryError(f"the upstream's authorization server metadata has no {name}")
    for name in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        if metadata.get(name) is not None:
            if not isinstance(metadata[name], str):
                raise DiscoveryError(f"the upstream's authorization server metadata has an invalid {name}")
            _guarded(guard, metadata[name], f"the {name}")
    return {"resource": server_url, "guarded_by": guard.url, "guarded_private": guard.private,
            "resource_metadata": None if resource_metadata is None else resource_metadata.model_dump(
                mode="json", exclude_none=True),
            "metadata": metadata,
            "scope": scope}
