"""Admin-entered endpoints and the authorization response's ``iss`` (RFC 9207), against the real
oidc-provider (which sends ``iss`` and says so: ``authorization_response_iss_parameter_supported``).

- Entered endpoints (authorization, token, revocation) with an entered client and
  ``authorization_server``: nothing is discovered, the person connects, the calls work, the
  revocation goes to the entered endpoint; an ``iss`` other than the entered authorization server
  is refused by the callback (a clear page, nothing stored, the code not spent).
- An entered ``authorization_server`` (discovery skips the upstream's resource metadata) whose
  metadata promises ``iss``: a callback without it, or with another one, is refused, nothing stored;
  with the right one it connects."""
from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import func, select

from app.credentials.bindings import Binding
from app.credentials.resolvers import resolver
from app.extensions import db
from app.models import Credential, Flow, UpstreamOAuth
from tests.support.mcp import Rpc, add_key, stop
from tests.support.oidc_provider import HttpxBrowser, start_protected_upstream, static_client
from tests.support.web import Web
from tests.upstream_oauth.test_oidc import CALLBACK

CLIENT = "entered-client"


@pytest.fixture(scope="module")
def provider(oidc_provider_factory):
    return oidc_provider_factory(clients=[static_client(CLIENT, redirect_uris=[CALLBACK])])


@pytest.fixture(scope="module")
def upstream(provider):
    proc, url = start_protected_upstream(provider.issuer)
    yield url
    stop(proc)


def server_and_flow(app, admin_id, url, oauth) -> tuple[int, str]:
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": "up", "url": url, "auth_type": "per_user_oauth", "oauth": oauth})
        db.session.commit()
        flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin_id, server.id))
        return server.id, flow_id


def authorize(web: Web, flow_id: str) -> dict:
    """To the provider and back as far as the redirect to Portcullis (not followed): its query."""
    r = web.get(f"/connect/{flow_id}/authorize")
    assert r.status_code == 303, r.get_data(as_text=True)
    result = HttpxBrowser("alice@example.com").authorize(r.headers["Location"], stop_at=CALLBACK)
    assert result.code and result.iss, result.params
    return dict(result.params)


def callback(web: Web, params: dict):
    return web.get("/connect/callback?" + urlencode(params))


def stored_credentials(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Credential))


def test_entered_endpoints_and_a_wrong_iss(app, admin_id, provider, upstream, monkeypatch):
    d = provider.discovery()
    oauth = {"client_id": CLIENT, "authorization_server": provider.issuer,
             "authorization_endpoint": d["authorization_endpoint"], "token_endpoint": d["token_endpoint"],
             "revocation_endpoint": d["revocation_endpoint"], "scopes": ["mcp:tools", "offline_access"]}
    sid, flow_id = server_and_flow(app, admin_id, upstream, oauth)
    from app.upstream_oauth import discovery
    monkeypatch.setattr(discovery, "discover", lambda *a, **k: pytest.fail("nothing is discovered"))
    web = Web(app.test_client()).login("admin@example.com")

    params = authorize(web, flow_id)
    assert params["iss"] == provider.issuer
    r = callback(web, {**params, "iss": "https://elsewhere.example"})
    page = r.get_data(as_text=True)
    assert r.status_code == 403 and "another issuer" in page and "Not connected" in page
    assert stored_credentials(app) == 0
    with app.app_context():
        assert db.session.get(Flow, flow_id).status == "pending"

    r = callback(web, params)  # the genuine answer: its code was not spent by the refused one
    assert r.status_code == 200 and "Connected" in r.get_data(as_text=True), r.get_data(as_text=True)
    with app.app_context():
        reg = db.session.get(UpstreamOAuth, sid).registration
        assert reg["resource_metadata"] is None and reg["client"] == {"how": "admin"}
        assert reg["metadata"] == {"issuer": provider.issuer, **{k: oauth[k] for k in (
            "authorization_endpoint", "token_endpoint", "revocation_endpoint")}}
        cred = db.session.scalar(select(Credential))
        values = dict(cred.values)
    _, key = add_key(app, {sid: None}, name="k", owner_id=admin_id)
    rpc = Rpc(app.test_client(), key)
    rpc.initialize()
    who = rpc.call("tools/call", {"name": "up__whoami", "arguments": {}}).json["result"]["structuredContent"]
    assert who["sub"] == "alice@example.com" and who["client_id"] == CLIENT

    # revoking goes to the entered revocation endpoint: the refresh token is dead at the provider
    with app.app_context():
        resolver("per_user_oauth").revoke(db.session.get(Credential, cred.id))
    r = provider.token({"grant_type": "refresh_token", "refresh_token": values["refresh_token"], "client_id": CLIENT})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_metadata_promising_iss_missing_or_wrong_is_refused(app, admin_id, provider, upstream):
    _, flow_id = server_and_flow(app, admin_id, upstream, {"client_id": CLIENT, "authorization_server": provider.issuer,
                                                         "scopes": ["mcp:tools"]})
    web = Web(app.test_client()).login("admin@example.com")
    params = authorize(web, flow_id)
    without = {k: v for k, v in params.items() if k != "iss"}
    r = callback(web, without)
    assert r.status_code == 403 and "lacks the issuer" in r.get_data(as_text=True)
    r = callback(web, {**params, "iss": provider.issuer + "/"})  # compared byte for byte
    assert r.status_code == 403 and "another issuer" in r.get_data(as_text=True)
    assert stored_credentials(app) == 0
    r = callback(web, params)
    assert r.status_code == 200 and "Connected" in r.get_data(as_text=True)
    assert stored_credentials(app) == 1
    assert urlsplit(CALLBACK).path == "/connect/callback"
