"""What Portcullis knows of an upstream's authorization server and which client it is there,
kept per server in ``upstream_oauth.registration`` (encrypted), apart from the admin's
``oauth_config``: discovered once, registered once, reused until the upstream URL, the admin's
authorization server or Portcullis's redirect URI change (an edit of scopes or of the secret
keeps the registration).

The client, in order: the admin's client id (and secret), else a client ID metadata document
that Portcullis serves at ``<PORTCULLIS_BASE_URL>/connect/client-metadata.json`` when the
authorization server supports them and the base URL is HTTPS (a plain-HTTP or loopback
deployment cannot be fetched by the upstream), else dynamic registration (RFC 7591)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

import httpx
from flask import current_app
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import McpServer, UpstreamOAuth
from .discovery import MAX_DOCUMENT, DiscoveryError, discover, http

CALLBACK_PATH = "/connect/callback"
CLIENT_METADATA_PATH = "/connect/client-metadata.json"
CLIENT_NAME = "Portcullis"
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "revocation_endpoint")


def redirect_uri() -> str:
    return current_app.config["PORTCULLIS_BASE_URL"] + CALLBACK_PATH


def client_metadata_url() -> str | None:
    """The stable URL of Portcullis's client ID metadata document; None when the base URL is not
    HTTPS on a public name (the upstream could not fetch it)."""
    base = current_app.config["PORTCULLIS_BASE_URL"]
    parts = urlsplit(base)
    if parts.scheme != "https" or not parts.hostname or parts.hostname == "localhost":
        return None
    try:
        if ip_address(parts.hostname).is_loopback:
            return None
    except ValueError:
        pass
    return base + CLIENT_METADATA_PATH


def client_metadata(client_id: str | None = None) -> dict:
    """Portcullis as an OAuth client of upstreams (the document, and the DCR request)."""
    out = {"client_name": CLIENT_NAME, "redirect_uris": [redirect_uri()],
           "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
           "token_endpoint_auth_method": "none", "client_uri": current_app.config["PORTCULLIS_BASE_URL"]}
    if client_id:
        out["client_id"] = client_id
    return out


@dataclass(frozen=True)
class Registration:
    """One server's discovered metadata and client, as the protocol needs them."""
    server_id: int
    resource: str
    metadata: dict
    client_id: str
    client_secret: str | None
    auth_method: str
    scope: str | None
    guarded_by: str | None = None  # discovered endpoints: their connections are pinned (app/netguard.py)
    guarded_private: bool | None = None  # the policy decided at discovery (None: decided when used)

    @property
    def issuer(self) -> str | None:
        """None for admin-entered endpoints without an authorization server."""
        return self.metadata.get("issuer")


def _fingerprint(server: McpServer) -> str:
    cfg = server.oauth_config or {}
    raw = json.dumps([server.url, cfg.get("authorization_server"), redirect_uri(), client_metadata_url(),
                      *(cfg.get(n) for n in ENDPOINTS)])
    return hashlib.sha256(raw.encode()).hexdigest()


def _register_dynamically(metadata: dict, guard) -> dict:
    endpoint = metadata.get("registration_endpoint")
    if not isinstance(endpoint, str):
        raise DiscoveryError("the upstream's authorization server offers no dynamic client registration and no "
                             "client ID metadata documents here: enter a client id in the server's OAuth settings")
    request = client_metadata()
    methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if "none" not in methods:  # a confidential client then (the secret is stored encrypted)
        request["token_endpoint_auth_method"] = "client_secret_basic" if "client_secret_basic" in methods \
            else "client_secret_post"
    try:
        with http(guard) as client:
            r = client.post(endpoint, json=request)
    except httpx.HTTPError as e:
        raise DiscoveryError(f"dynamic client registration failed ({type(e).__name__})") from None
    try:
        doc = r.json() if len(r.content) <= MAX_DOCUMENT else None
    except ValueError:
        doc = None
    if r.status_code not in (200, 201) or not isinstance(doc, dict) or not isinstance(doc.get("client_id"), str):
        error = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), str) else None
        raise DiscoveryError(f"dynamic client registration was refused (HTTP {r.status_code}"
                             + (f", {error[:60]}" if error else "") + ")")
    out = {"how": "dynamic", "client_id": doc["client_id"],
           "token_endpoint_auth_method": doc.get("token_endpoint_auth_method") or request["token_endpoint_auth_method"]}
    if isinstance(doc.get("client_secret"), str):
        out["client_secret"] = doc["client_secret"]
    return out


def _client(metadata: dict, guarded_by: str | None = None, guarded_private: bool | None = None) -> dict:
    url = client_metadata_url()
    if url is not None and metadata.get("client_id_metadata_document_supported") is True:
        return {"how": "metadata_document", "client_id": url, "token_endpoint_auth_method": "none"}
    return _register_dynamically(metadata, guard(guarded_by, guarded_private))


def guard(guarded_by: str | None, private: bool | None = None):
    """The SSRF guard (app/netguard.py) for the endpoints of a discovered authorization server,
    with the policy decided at discovery when known; None for the admin's own endpoints."""
    from .. import netguard
    return netguard.Guard(guarded_by, private) if guarded_by else None


def ensure(server_id: int, force: bool = False) -> Registration:
    """The server's registration, discovered and registered first when missing or stale. The
    HTTP calls run outside any transaction; raises DiscoveryError."""
    server = db.session.get(McpServer, server_id)
    row = db.session.get(UpstreamOAuth, server_id)
    fingerprint = _fingerprint(server)
    state = (row.registration if row is not None else None) or {}
    if force or state.get("fingerprint") != fingerprint:
        cfg = dict(server.oauth_config or {})
        url = server.url
        db.session.rollback()
        found = _entered(url, cfg) or discover(url, cfg.get("authorization_server"))
        client = {"how": "admin"} if cfg.get("client_id") else _client(found["metadata"], found.get("guarded_by"),
                                                                      found.get("guarded_private"))
        state = {**found, "client": client, "fingerprint": fingerprint}
        _save(server_id, state)
        server = db.session.get(McpServer, server_id)
    return view(server, state)


def _entered(url: str, cfg: dict) -> dict | None:
    """The admin's endpoints, for an upstream without metadata: used as they are, no discovery.
    The issuer is the admin's authorization server when entered (then ``iss`` is checked), else
    unknown."""
    if not (cfg.get("authorization_endpoint") and cfg.get("token_endpoint")):
        return None
    metadata = {n: cfg[n] for n in ENDPOINTS if cfg.get(n)}
    metadata["issuer"] = cfg.get("authorization_server")
    return {"resource": url, "resource_metadata": None, "metadata": metadata, "scope": None}


def _save(server_id: int, state: dict) -> None:
    for _ in range(2):
        row = db.session.get(UpstreamOAuth, server_id)
        if row is None:
            row = UpstreamOAuth(mcp_server_id=server_id)
            db.session.add(row)
        row.registration = state
        try:
            db.session.commit()
            return
        except IntegrityError:  # another instance stored its registration at the same moment
            db.session.rollback()


def view(server: McpServer, state: dict) -> Registration:
    cfg = server.oauth_config or {}
    client = state["client"]
    if cfg.get("client_id"):  # the admin's client always wins, with its current secret
        client_id, secret = cfg["client_id"], cfg.get("client_secret")
        method = "client_secret_basic" if secret else "none"
    else:
        client_id, secret = client["client_id"], client.get("client_secret")
        method = client.get("token_endpoint_auth_method") or ("client_secret_basic" if secret else "none")
    scopes = cfg.get("scopes")
    if scopes:
        scope = " ".join(scopes)
    else:
        prm = state.get("resource_metadata") or {}
        scope = state.get("scope") or (" ".join(prm["scopes_supported"]) if prm.get("scopes_supported") else None)
    guarded_by = state["guarded_by"] if "guarded_by" in state else _guarded_by(state, cfg)
    return Registration(server.id, state["resource"], state["metadata"], client_id, secret, method, scope, guarded_by,
                        state.get("guarded_private") if "guarded_by" in state else None)


def _guarded_by(state: dict, cfg: dict) -> str | None:
    """For a registration stored before ``guarded_by`` was kept: what discovery would have
    said (the admin's own endpoints: None; an admin-entered authorization server; else the
    upstream)."""
    if cfg.get("authorization_endpoint") and cfg.get("token_endpoint"):
        return None
    return cfg.get("authorization_server") or state["resource"]


def drop(server_id: int) -> None:
    """The upstream answered ``invalid_client``: it no longer knows the client Portcullis
    registered there. Forget it now (committed) so that the next connection registers again."""
    db.session.rollback()
    forget(server_id)
    db.session.commit()


def forget(server_id: int) -> None:
    """Drop the stored discovery and registration (the next connection discovers again)."""
    row = db.session.get(UpstreamOAuth, server_id)
    if row is not None:
        row.registration = None
