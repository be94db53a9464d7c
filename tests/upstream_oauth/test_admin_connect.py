"""The admin's side of OAuth servers, against the real oidc-provider: creating one through the JSON
API answers where the admin consents (``connect_url``, the page's own flow) with the tools not yet
discovered; ``POST /mcp-servers/<id>/oauth-connection`` gives a new link; disconnecting a shared
account (page, htmx with CSRF; API ``DELETE .../oauth-connection``) deletes the token here first,
then revokes it at the provider, and calls answer that an admin must connect it."""
from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select

from app.extensions import db
from app.models import UpstreamOAuth
from app.upstream_oauth import protocol
from tests.conftest import make_user
from tests.support.api import admin_api, audit_actions  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.mcp import Rpc, add_key
from tests.support.web import Web
from tests.upstream_oauth.test_oidc import connect

BASE = "http://127.0.0.1:8080"  # the test app's PORTCULLIS_BASE_URL


def create(admin_api, url, auth_type, **fields):
    r = admin_api.post("/mcp-servers", json={"name": "up", "url": url, "auth_type": auth_type, **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def open_link(web: Web, link: str, login: str) -> str:
    assert link.startswith(BASE + "/connect/") and "#" not in link
    return connect(web, urlsplit(link).path.rsplit("/", 1)[1], login)


def whoami(rpc: Rpc) -> dict:
    return rpc.call("tools/call", {"name": "up__whoami", "arguments": {}}).json["result"]


def test_api_create_per_user_oauth_answers_the_connect_link(app, admin_api, oidc_provider, protected_upstream):
    server = create(admin_api, protected_upstream, "per_user_oauth")
    assert server["tools"] == [] and server["tools_discovered"] is False and server["tools_refreshed_at"] is None
    assert server["connect_expires_at"] and server["connect_url"] == f"{BASE}/connect/{server['connect_flow_id']}"
    # the link is the creating admin's own: another admin's login cannot use it
    make_user(app, "other-admin@example.com", "admin")
    other = Web(app.test_client()).login("other-admin@example.com")
    assert other.get(urlsplit(server["connect_url"]).path).status_code == 403

    admin = Web(app.test_client()).login("admin@example.com")
    assert "Connected" in open_link(admin, server["connect_url"], "alice@example.com")
    after = admin_api.get(f"/mcp-servers/{server['id']}").get_json()
    assert after["tools_discovered"] is True and {t["name"] for t in after["tools"]} >= {"whoami", "echo"}
    assert "connect_url" not in after

    # a new link on demand (reconnect), same flow machinery; not for a server without OAuth
    again = admin_api.post(f"/mcp-servers/{server['id']}/oauth-connection")
    assert again.status_code == 200 and again.get_json()["connect_url"].startswith(BASE + "/connect/")
    plain = admin_api.post("/mcp-servers", json={"name": "plain", "url": protected_upstream, "enabled": False})
    assert plain.status_code == 201 and "connect_url" not in plain.get_json()
    assert admin_api.post(f"/mcp-servers/{plain.get_json()['id']}/oauth-connection").status_code == 409
    assert admin_api.delete(f"/mcp-servers/{server['id']}/oauth-connection").status_code == 409
    disabled = create(admin_api, protected_upstream, "per_user_oauth", name="off", enabled=False)
    assert "connect_url" not in disabled and disabled["tools_discovered"] is False


def shared_token(app, server_id) -> dict | None:
    with app.app_context():
        row = db.session.get(UpstreamOAuth, server_id)
        return None if row is None else row.token


def provider_refuses(oidc_provider, app, server_id, refresh_token) -> bool:
    with app.app_context():
        client_id = db.session.get(UpstreamOAuth, server_id).registration["client"]["client_id"]
    r = oidc_provider.token({"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id})
    return r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_disconnect_shared_account_on_the_page_and_in_the_api(app, admin_api, oidc_provider, protected_upstream,
                                                              monkeypatch):
    server = create(admin_api, protected_upstream, "oauth")
    sid = server["id"]
    admin = Web(app.test_client()).login("admin@example.com")
    assert "Connected" in open_link(admin, server["connect_url"], "alice@example.com")
    _, key = add_key(app, {sid: None}, name="bot")
    rpc = Rpc(app.test_client(), key)
    rpc.initialize()
    assert whoami(rpc)["structuredContent"]["sub"] == "alice@example.com"

    page = admin.get(f"/servers/{sid}").get_data(as_text=True)
    assert 'id="oauth-disconnect"' in page and f'hx-post="/servers/{sid}/oauth-disconnect"' in page
    token = shared_token(app, sid)
    assert admin.post(f"/servers/{sid}/oauth-disconnect", data={"csrf_token": "wrong"}, htmx=True).status_code == 400
    assert shared_token(app, sid) == token  # no CSRF token, nothing done
    r = admin.post(f"/servers/{sid}/oauth-disconnect", htmx=True)
    assert r.status_code in (200, 303) and shared_token(app, sid) is None
    assert audit_actions(app)[-1] == "mcp_server.oauth_disconnect"
    assert provider_refuses(oidc_provider, app, sid, token["refresh_token"])  # revoked at the provider too
    answer = whoami(rpc)
    assert answer["isError"] and "administrator must connect" in answer["content"][0]["text"]
    assert "_meta" not in answer
    assert 'id="oauth-disconnect"' not in admin.get(f"/servers/{sid}").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(UpstreamOAuth, sid).registration  # the client registration is kept

    # reconnect through the API's link, then disconnect through the API; a failing revocation at
    # the upstream is logged and never undoes the disconnection
    link = admin_api.post(f"/mcp-servers/{sid}/oauth-connection").get_json()["connect_url"]
    assert "Connected" in open_link(admin, link, "bob@example.com")
    assert whoami(rpc)["structuredContent"]["sub"] == "bob@example.com"

    def down(*a, **k):
        raise protocol.Unreachable("the revocation endpoint is unreachable (ConnectError)")
    monkeypatch.setattr(protocol, "revoke", down)
    assert admin_api.delete(f"/mcp-servers/{sid}/oauth-connection").status_code == 204
    assert shared_token(app, sid) is None
    assert "administrator must connect" in whoami(rpc)["content"][0]["text"]
    assert admin_api.delete(f"/mcp-servers/{sid}/oauth-connection").status_code == 204  # nothing left: still fine
    with app.app_context():
        assert db.session.scalar(select(UpstreamOAuth.status).where(UpstreamOAuth.mcp_server_id == sid)) is None


def test_an_admin_demoted_during_the_consent_cannot_connect_the_shared_account(app, admin_api, oidc_provider,
                                                                               protected_upstream):
    """The shared account is an admin's to connect: the callback checks the role again (the flow
    was started while the person was an admin; it lives 15 minutes)."""
    from app.models import User
    from tests.support.oidc_provider import HttpxBrowser
    from tests.upstream_oauth.test_oidc import CALLBACK

    server = create(admin_api, protected_upstream, "oauth")
    web = Web(app.test_client()).login("admin@example.com")
    r = web.get(urlsplit(server["connect_url"]).path + "/authorize")
    assert r.status_code == 303
    result = HttpxBrowser("alice@example.com").authorize(r.headers["Location"], stop_at=CALLBACK)
    with app.app_context():
        db.session.scalar(select(User).where(User.email == "admin@example.com")).role = "member"
        db.session.commit()
    back = urlsplit(result.url)
    done = web.get(back.path + "?" + back.query)
    assert done.status_code == 403, done.get_data(as_text=True)[:300]
    assert "needs an admin" in done.get_data(as_text=True)
    assert shared_token(app, server["id"]) is None
