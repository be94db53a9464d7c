"""Driving Portcullis's authorization server the way an MCP client app does, over the Flask
test client: register, send the person through login and consent, exchange the code."""
from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

BASE = "http://127.0.0.1:8080"  # PORTCULLIS_BASE_URL of the test app (the default)
MCP = BASE + "/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(client, **metadata) -> dict:
    body = {"client_name": "Test App", "redirect_uris": [REDIRECT], "grant_types": ["authorization_code",
            "refresh_token"], "response_types": ["code"], "token_endpoint_auth_method": "none", **metadata}
    r = client.post("/oauth/register", json=body)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def authorize_url(client_id: str, challenge: str, *, redirect_uri: str = REDIRECT, state: str = "st-1",
                  resource: str | None = MCP, method: str | None = "S256", **extra) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state,
              "scope": "mcp", "code_challenge": challenge, **extra}
    if method:
        params["code_challenge_method"] = method
    if resource:
        params["resource"] = resource
    return "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def consent(web, url: str, decision: str = "approve", mode: str = "user", key_id: int | None = None):
    """GET the consent page (logged in), then POST the decision; returns the POST's answer."""
    page = web.get(url)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    data = {"decision": decision, "mode": mode}
    if key_id is not None:
        data["key_id"] = str(key_id)
    return web.post(url, data)


def code_for(web, client_id: str, **kw) -> tuple[str, str]:
    """Approve and return (code, verifier)."""
    verifier, challenge = pkce()
    mode, key_id = kw.pop("mode", "user"), kw.pop("key_id", None)
    r = consent(web, authorize_url(client_id, challenge, **kw), mode=mode, key_id=key_id)
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    q = query_of(r.headers["Location"])
    assert "code" in q, q
    return q["code"], verifier


def exchange(client, client_id: str, code: str, verifier: str, redirect_uri: str = REDIRECT, **extra):
    return client.post("/oauth/token", data={"grant_type": "authorization_code", "client_id": client_id,
                                             "code": code, "code_verifier": verifier, "redirect_uri": redirect_uri,
                                             **extra})


def refresh(client, client_id: str, refresh_token: str, **extra):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                             "refresh_token": refresh_token, **extra})


def tokens_for(client, web, **kw) -> tuple[dict, dict]:
    """A registered public client and its first token answer."""
    app_client = register(client)
    code, verifier = code_for(web, app_client["client_id"], **kw)
    r = exchange(client, app_client["client_id"], code, verifier)
    assert r.status_code == 200, r.get_data(as_text=True)
    return app_client, r.get_json()
