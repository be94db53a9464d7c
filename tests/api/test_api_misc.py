"""The JSON API as a whole: tokens, authentication and permissions on every route, error
format, pagination, the audit log, and secrets (canaries) that must never come back out."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import ApiToken, AuditEvent, McpServer, Service, User
from app.models.base import utcnow
from tests.conftest import PASSWORD, Api, make_user, token_for
from tests.support.api import admin_api, anon_api, member_api  # noqa: F401
from tests.support.api import (PUBLIC, CheckedApi, api_rules, assert_error, audit_actions, check_against_doc, count,
                               new_key, new_server, new_service, new_user)

MEMBER_ALLOWED = {"api.list_keys", "api.get_key", "api.delete_key",
                  # a member's own header flows and credentials (tests/api/test_header_flows_api.py)
                  "api.get_header_flow", "api.submit_header_flow", "api.delete_credential",
                  # the sessions of their own bindings (tests/api/test_sessions_api.py)
                  "api.list_sessions", "api.reauth_session", "api.delete_session",
                  # their own API tokens (tests/api/test_api_tokens.py)
                  "api.list_tokens", "api.delete_token",
                  # their own connected apps (tests/oauth/test_oauth_server.py)
                  "api.list_oauth_consents", "api.revoke_oauth_consent"}


def call(api, method, path, **kw):
    return getattr(api, method.lower())(path, **kw)


def post_token(client, email, password, app=None):
    r = client.post("/api/v1/tokens", json={"email": email, "password": password})
    if app is not None:
        check_against_doc(app, "POST", "/api/v1/tokens", r)
    return r


# --- tokens -----------------------------------------------------------------------------

def test_token_for_valid_credentials(app, client, admin_id):
    r = post_token(client, "admin@example.com", PASSWORD, app)
    assert r.status_code == 201
    token = r.get_json()["token"]
    assert token.startswith("pct_") and len(token) > 40
    api = CheckedApi(Api(client, token))
    assert api.get("/users").status_code == 200
    assert audit_actions(app)[-1] == "token.create"
    with app.app_context():
        row = db.session.scalar(select(ApiToken))
        assert row.token_hash != token and token not in row.prefix + row.token_hash
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.create"))
        assert token not in event.detail and event.actor == "admin@example.com"


def test_token_email_is_case_insensitive(app, client, admin_id):
    assert post_token(client, "  ADMIN@Example.com ", PASSWORD, app).status_code == 201


def test_token_for_member(app, client, member_id):
    r = post_token(client, "member@example.com", PASSWORD, app)
    assert r.status_code == 201
    member = CheckedApi(Api(client, r.get_json()["token"]))
    assert member.get("/virtual-keys").status_code == 200
    assert_error(member.get("/users"), 403, "forbidden")


@pytest.mark.parametrize("email,password,target", [
    ("admin@example.com", "wrong password!", "admin@example.com"),
    ("nobody@example.com", PASSWORD, "unknown e-mail #"),  # an unknown address is not kept (web/test_web_account.py)
])
def test_token_denied(app, client, admin_id, email, password, target):
    r = post_token(client, email, password, app)
    assert_error(r, 401, "unauthorized")
    assert count(app, ApiToken) == 0
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert event.action == "token.denied"
        assert event.target.startswith(target)
        assert password not in event.detail


def test_token_denied_for_inactive_user(app, client):
    make_user(app, "gone@example.com", active=False)
    assert_error(post_token(client, "gone@example.com", PASSWORD, app), 401)
    assert audit_actions(app) == ["token.denied"]
    assert count(app, ApiToken) == 0


@pytest.mark.parametrize("payload,fields", [
    ({}, {"email", "password"}),
    ({"email": "admin@example.com"}, {"password"}),
    ({"email": 5, "password": PASSWORD}, {"email"}),
    ({"email": "admin@example.com", "password": ["x"]}, {"password"}),
    ({"email": "admin@example.com", "password": PASSWORD, "remember": True}, {"remember"}),
    ({"email": "a" * 300, "password": PASSWORD}, {"email"}),
])
def test_token_bad_fields(app, client, admin_id, payload, fields):
    r = client.post("/api/v1/tokens", json=payload)
    check_against_doc(app, "POST", "/api/v1/tokens", r)
    assert_error(r, 422, "validation_failed", fields)
    assert count(app, ApiToken) == 0 and audit_actions(app) == []


@pytest.mark.parametrize("data", ["{not json", "", "[1, 2]", '"text"', "null", "42"])
def test_token_bad_body(app, client, admin_id, data):
    r = client.post("/api/v1/tokens", data=data, content_type="application/json")
    check_against_doc(app, "POST", "/api/v1/tokens", r)
    assert_error(r, 400, "bad_request")
    assert count(app, ApiToken) == 0


def test_token_login_rate_limit(app, client, admin_id):
    old = app.config["PORTCULLIS_LOGIN_RATE_LIMIT"]
    app.config["PORTCULLIS_LOGIN_RATE_LIMIT"] = "3 per minute"
    try:
        for _ in range(3):
            assert post_token(client, "admin@example.com", "wrong password!", app).status_code == 401
        r = post_token(client, "admin@example.com", PASSWORD, app)  # even the right one now
        err = assert_error(r, 429, "rate_limited")
        assert err["message"] and 0 < int(r.headers["Retry-After"]) <= 60
        assert count(app, ApiToken) == 0
        # other API routes are not limited by it
        assert CheckedApi(Api(client, token_for(app, admin_id))).get("/users").status_code == 200
    finally:
        app.config["PORTCULLIS_LOGIN_RATE_LIMIT"] = old


# --- authentication and permissions ------------------------------------------------------

def test_every_private_route_needs_a_token(app, anon_api):
    seen = 0
    for method, path, endpoint in api_rules(app):
        if endpoint in PUBLIC:
            continue
        r = call(anon_api, method, path, json={})
        assert_error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
        seen += 1
    assert seen >= 20


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer ", "Basic YWRtaW46cGFzcw==", "pct_abc", "Bearer  "])
def test_bad_authorization_headers(client, admin_id, header):
    r = client.get("/api/v1/users", headers={"Authorization": header})
    assert_error(r, 401, "unauthorized")
    assert "WWW-Authenticate" in r.headers


def test_every_admin_route_refuses_members(app, member_api):
    seen = 0
    for method, path, endpoint in api_rules(app):
        if endpoint in PUBLIC or endpoint in MEMBER_ALLOWED:
            continue
        assert_error(call(member_api, method, path, json={"name": "x"}), 403, "forbidden")
        seen += 1
    assert seen >= 18


def test_member_routes_do_not_leak_existence(app, member_api):
    checked = set()
    for method, path, endpoint in api_rules(app):
        if endpoint in ("api.get_key", "api.delete_key", "api.reauth_session", "api.delete_session",
                        "api.delete_token"):
            assert_error(call(member_api, method, path), 404, "not_found")
            checked.add(endpoint)
    assert checked == {"api.get_key", "api.delete_key", "api.reauth_session", "api.delete_session", "api.delete_token"}


def _token_row(app, token, **changes):
    from app.models.base import digest

    with app.app_context():
        row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
        for k, v in changes.items():
            setattr(row, k, v)
        db.session.commit()


def test_expired_token(app, client, admin_id):
    token = token_for(app, admin_id)
    api = CheckedApi(Api(client, token))
    assert api.get("/users").status_code == 200
    _token_row(app, token, expires_at=utcnow() - timedelta(seconds=1))
    assert_error(api.get("/users"), 401)


def test_revoked_token(app, client, admin_id):
    token = token_for(app, admin_id)
    _token_row(app, token, revoked_at=utcnow())
    assert_error(CheckedApi(Api(client, token)).get("/users"), 401)


def test_token_of_inactive_or_deleted_user(app, client, admin_api):
    """Deactivation ends the token for good (re-activation does not bring it back); deletion
    deletes it. (Every way a login ends: tests/api/test_api_tokens.py.)"""
    uid = make_user(app, "second@example.com", "admin")
    api = CheckedApi(Api(client, token_for(app, uid)))
    assert api.get("/users").status_code == 200
    assert admin_api.patch(f"/users/{uid}", json={"active": False}).status_code == 200
    assert_error(api.get("/users"), 401)
    assert admin_api.patch(f"/users/{uid}", json={"active": True}).status_code == 200
    assert_error(api.get("/users"), 401)
    fresh = CheckedApi(Api(client, token_for(app, uid)))
    assert fresh.get("/users").status_code == 200
    assert admin_api.delete(f"/users/{uid}").status_code == 204
    assert_error(fresh.get("/users"), 401)
    assert count(app, ApiToken, ApiToken.user_id == uid) == 0


def test_demoted_admin_loses_admin_routes(app, client, admin_api):
    """A role change ends the user's tokens; a new one has the new role's rights."""
    uid = make_user(app, "second@example.com", "admin")
    api = CheckedApi(Api(client, token_for(app, uid)))
    assert admin_api.patch(f"/users/{uid}", json={"role": "member"}).status_code == 200
    assert_error(api.get("/virtual-keys"), 401)
    member = CheckedApi(Api(client, token_for(app, uid)))
    assert_error(member.get("/users"), 403)
    assert member.get("/virtual-keys").status_code == 200


def test_dashboard_cookie_is_not_api_auth(app, client, admin_api):
    """A browser session never authenticates API calls (no CSRF exposure)."""
    client.set_cookie("session", "forged")
    assert_error(client.get("/api/v1/users"), 401)


# --- error format -----------------------------------------------------------------------

WRITE_ROUTES = [("post", "/users"), ("post", "/mcp-servers"), ("post", "/virtual-keys"), ("post", "/services"),
                ("patch", "/users/{id}"), ("patch", "/mcp-servers/{id}"), ("patch", "/virtual-keys/{id}"),
                ("patch", "/services/{id}")]


@pytest.fixture
def existing(admin_api, admin_id):
    """One object of each kind, for the PATCH routes."""
    return {"/users": admin_id, "/mcp-servers": new_server(admin_api)["id"],
            "/virtual-keys": new_key(admin_api)["id"], "/services": new_service(admin_api)["id"]}


def _concrete(path, existing):
    base = path.replace("/{id}", "")
    return path.replace("{id}", str(existing[base])), base


@pytest.mark.parametrize("method,path", WRITE_ROUTES)
@pytest.mark.parametrize("data,message", [
    ("{oops", "not valid JSON"), ('{"a": 1,}', "not valid JSON"), ("", "JSON object body is required"),
    ("[]", "must be a JSON object"), ('["name"]', "must be a JSON object"), ('"x"', "must be a JSON object"),
    ("3", "must be a JSON object"), ("true", "must be a JSON object"), ("\xff\xfe", "not valid JSON"),
])
def test_malformed_or_non_object_bodies(admin_api, existing, method, path, data, message):
    path, base = _concrete(path, existing)
    before = admin_api.get(base).get_json()
    n_audit = len(admin_api.get("/audit-events").get_json()["audit_events"])
    r = call(admin_api, method, path, data=data, content_type="application/json")
    err = assert_error(r, 400, "bad_request")
    assert message in err["message"]
    assert admin_api.get(base).get_json() == before
    assert len(admin_api.get("/audit-events").get_json()["audit_events"]) == n_audit


@pytest.mark.parametrize("method,path", WRITE_ROUTES)
def test_unknown_fields_are_refused(admin_api, existing, method, path):
    path, base = _concrete(path, existing)
    before = admin_api.get(base).get_json()
    err = assert_error(call(admin_api, method, path, json={"nmae": "typo", "is_admin": True}), 422,
                       "validation_failed")
    assert err["fields"]["nmae"] == "unknown field" and err["fields"]["is_admin"] == "unknown field"
    assert admin_api.get(base).get_json() == before


def test_json_without_content_type_is_read(admin_api):
    r = admin_api.post("/services", data='{"name": "plain", "base_url": "https://x.example", "secret": "s"}',
                       content_type="text/plain")
    assert r.status_code == 201


@pytest.mark.parametrize("path", ["/nope", "/users/abc", "/users/1/extra", "/virtual-keys/-1", "/mcp-servers/1.5"])
def test_unknown_paths_are_json_404(admin_api, anon_api, path):
    for api in (admin_api, anon_api):
        assert_error(api.get(path), 404, "not_found")


def test_wrong_method_is_json_405(admin_api):
    r = admin_api.client.put("/api/v1/users", json={}, headers={"Authorization": f"Bearer {admin_api.token}"})
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    r = admin_api.client.post("/api/v1/users/1", json={}, headers={"Authorization": f"Bearer {admin_api.token}"})
    assert_error(r, 405, "method_not_allowed")


@pytest.mark.parametrize("collection", ["users", "mcp-servers", "virtual-keys", "services"])
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
@pytest.mark.parametrize("bad_id", ["999999", "2147483648", "99999999999999999999999"])
def test_unknown_ids_are_404(admin_api, collection, method, bad_id):
    assert_error(call(admin_api, method, f"/{collection}/{bad_id}", json={}), 404, "not_found")


# --- pagination -------------------------------------------------------------------------

LISTS = {"/users": "users", "/mcp-servers": "mcp_servers", "/virtual-keys": "virtual_keys",
         "/services": "services", "/audit-events": "audit_events"}


@pytest.mark.parametrize("path", list(LISTS))
@pytest.mark.parametrize("query,fields", [
    ("limit=0", {"limit"}), ("limit=501", {"limit"}), ("limit=-1", {"limit"}), ("limit=abc", {"limit"}),
    ("limit=1.5", {"limit"}), ("limit=", {"limit"}), ("limit=%C2%B2", {"limit"}), ("limit=%D9%A3", {"limit"}),
    ("offset=-1", {"offset"}), ("offset=x", {"offset"}), ("offset=%C2%B2", {"offset"}),
    ("offset=99999999999999999999999", {"offset"}), ("limit=0&offset=-5", {"limit", "offset"}),
])
def test_bad_pagination(admin_api, path, query, fields):
    assert_error(admin_api.get(f"{path}?{query}"), 400, "bad_request", fields)


@pytest.mark.parametrize("path", list(LISTS))
def test_pagination_envelope(admin_api, path):
    for i in range(3):
        new_user(admin_api, f"u{i}@example.com")
        new_server(admin_api, f"srv{i}")
        new_service(admin_api, f"svc{i}")
        new_key(admin_api, f"key {i}")
    whole = admin_api.get(path).get_json()
    items = whole[LISTS[path]]
    total = whole["total_count"]
    assert whole["count"] == len(items) == total >= 3
    assert (whole["limit"], whole["offset"]) == (50, 0)
    pages = []
    for offset in range(0, total, 2):
        page = admin_api.get(f"{path}?limit=2&offset={offset}").get_json()
        assert (page["limit"], page["offset"], page["total_count"]) == (2, offset, total)
        assert page["count"] == len(page[LISTS[path]]) == min(2, total - offset)
        pages += page[LISTS[path]]
    assert pages == items
    past = admin_api.get(f"{path}?limit=500&offset={total + 10}").get_json()
    assert past[LISTS[path]] == [] and past["count"] == 0 and past["total_count"] == total


# --- audit log --------------------------------------------------------------------------

def test_audit_events_newest_first_and_filtered(app, admin_api):
    server = new_server(admin_api, "alpha")
    admin_api.patch(f"/mcp-servers/{server['id']}", json={"enabled": False})
    admin_api.delete(f"/mcp-servers/{server['id']}")
    events = admin_api.get("/audit-events").get_json()["audit_events"]
    assert [e["action"] for e in events] == ["mcp_server.delete", "mcp_server.update", "mcp_server.create"]
    assert all(e["actor"] == {"type": "user", "id": events[0]["actor"]["id"], "name": "admin@example.com"}
               for e in events)
    assert events[2]["target"] == {"type": "mcp_servers", "id": server["id"], "name": "alpha"}
    assert events[1]["detail"] == "changed enabled"
    only = admin_api.get("/audit-events?action=mcp_server.update").get_json()
    assert [e["action"] for e in only["audit_events"]] == ["mcp_server.update"] and only["total_count"] == 1
    assert admin_api.get("/audit-events?action=nothing.like.this").get_json()["total_count"] == 0


def test_audit_events_are_admin_only(member_api, anon_api):
    assert_error(member_api.get("/audit-events"), 403)
    assert_error(anon_api.get("/audit-events"), 401)


def test_reads_are_not_audited(app, admin_api):
    new_service(admin_api)
    for path in ("/users", "/services", "/services/1", "/virtual-keys", "/audit-events", "/openapi.json"):
        admin_api.get(path)
    assert audit_actions(app) == ["service.create"]


# --- secrets never come back out ---------------------------------------------------------

CANARY = "CANARY-7f3a9c1e"


def ok(r):
    """A successful answer's text: a secret's absence from a refusal would prove nothing."""
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_data(as_text=True)


def _make_secret_things(app, admin_api, member_api):
    """Objects carrying canary secrets in every secret field; returns every secret used."""
    secrets = {}
    server = new_server(admin_api, "hdrs", auth_type="headers",
                        headers={"X-Api-Key": CANARY + "-header", "X-Other": CANARY + "-other"})
    ok(admin_api.patch(f"/mcp-servers/{server['id']}", json={"headers": {"X-Api-Key": CANARY + "-header2"}}))
    oauth = new_server(admin_api, "oauthy", auth_type="per_user_oauth",
                       oauth={"client_id": "public-client", "client_secret": CANARY + "-client"})
    ok(admin_api.patch(f"/mcp-servers/{oauth['id']}", json={"oauth": {"client_id": "other-client",
                                                                      "client_secret": CANARY + "-client2"}}))
    service = new_service(admin_api, "weather", secret=CANARY + "-service", credential_header="Authorization")
    ok(admin_api.patch(f"/services/{service['id']}", json={"secret": CANARY + "-service2"}))
    member_id = admin_api.get("/users?q=member").get_json()["users"][0]["id"]
    key = new_key(admin_api, "mine", owner_id=member_id, mcp_servers=[{"server_id": server["id"], "tools": None}],
                  services=[{"service_id": service["id"], "scope": "read"}])
    secrets["vk"] = key["key"]
    user = new_user(admin_api, "canary@example.com", password=CANARY + "-password")
    ok(admin_api.patch(f"/users/{user['id']}", json={"password": CANARY + "-password2"}))
    r = admin_api.client.post("/api/v1/tokens", json={"email": "canary@example.com", "password": CANARY + "-wrong"})
    assert r.status_code == 401
    r = admin_api.client.post("/api/v1/tokens", json={"email": "canary@example.com",
                                                      "password": CANARY + "-password2"})
    assert r.status_code == 201
    secrets["token"] = r.get_json()["token"]
    secrets["admin_token"] = admin_api.token
    secrets["member_token"] = member_api.token
    return {"server": server["id"], "oauth": oauth["id"], "service": service["id"], "key": key["id"],
            "user": user["id"]}, secrets


def test_no_secret_in_any_answer_or_audit_event(app, admin_api, member_api):
    ids, secrets = _make_secret_things(app, admin_api, member_api)
    answers = []
    for path in ("/users", f"/users/{ids['user']}", "/mcp-servers", f"/mcp-servers/{ids['server']}",
                 f"/mcp-servers/{ids['oauth']}", "/services", f"/services/{ids['service']}", "/virtual-keys",
                 f"/virtual-keys/{ids['key']}", "/audit-events?limit=500"):
        r = admin_api.get(path)
        assert r.status_code == 200
        answers.append(r.get_data(as_text=True))
    for path in ("/virtual-keys", f"/virtual-keys/{ids['key']}"):
        answers.append(ok(member_api.get(path)))
    # PATCH answers do not echo secrets either
    answers.append(ok(admin_api.patch(f"/services/{ids['service']}", json={"secret": CANARY + "-3"})))
    answers.append(ok(admin_api.patch(f"/mcp-servers/{ids['server']}", json={"headers": {"X-New": CANARY + "-4"}})))
    everything = "\n".join(answers)
    assert CANARY not in everything
    assert set(secrets) == {"vk", "token", "admin_token", "member_token"}
    for secret in secrets.values():
        assert secret not in everything
    assert '"key":' not in everything  # the VK secret field is in the create answer only
    with app.app_context():
        details = " ".join(f"{e.detail} {e.target} {e.actor}" for e in db.session.scalars(select(AuditEvent)))
    assert CANARY not in details
    assert "token.denied" in audit_actions(app)


def test_no_secret_in_the_raw_database(app, admin_api, member_api):
    ids, secrets = _make_secret_things(app, admin_api, member_api)
    with app.app_context():
        dumped = []
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(text(f'SELECT * FROM "{table.name}"')):
                dumped.append(" ".join(str(v) for v in row))
        raw = "\n".join(dumped)
        assert len(dumped) > 10
        assert CANARY not in raw
        assert set(secrets) == {"vk", "token", "admin_token", "member_token"}
        for name, secret in secrets.items():
            assert secret not in raw, name
            assert secret[4:20] not in raw, name  # not even a part past the visible prefix
        # ... while the application still reads them back
        assert db.session.get(Service, ids["service"]).secret == CANARY + "-service2"
        server = db.session.get(McpServer, ids["server"])
        assert server.shared_headers == {"X-Api-Key": CANARY + "-header2", "X-Other": CANARY + "-other"}
        assert db.session.get(McpServer, ids["oauth"]).oauth_config["client_secret"] == CANARY + "-client2"
        user = db.session.get(User, ids["user"])
        assert user.check_password(CANARY + "-password2")
        db.session.remove()
    assert admin_api.get(f"/services/{ids['service']}").get_json()["secret_set"] is True
    assert admin_api.get(f"/mcp-servers/{ids['server']}").get_json()["headers"] == ["X-Api-Key", "X-Other"]
