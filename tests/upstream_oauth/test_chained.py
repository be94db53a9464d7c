"""Portcullis behind Portcullis: one instance's /mcp (under gunicorn, protected by its own
authorization server) is the other's per_user_oauth upstream. The outer instance discovers the
inner's authorization server from its 401, registers dynamically, sends each person through the
inner's real login and consent (a cookie-keeping HTTP client plays the browser), stores their
tokens encrypted, refreshes them when they expire (rotation stored), turns a dead grant into
needs_reauth and a new auth-required answer, and revokes at the inner too."""
from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from app.credentials import store
from app.credentials.bindings import Binding
from app.credentials.resolvers import resolver
from app.extensions import db
from app.models import Credential, Flow, McpServer, UpstreamOAuth
from app.models.base import utcnow
from tests.conftest import PASSWORD, make_user, token_for, Api
from tests.support.mcp import Rpc, add_key, free_port, gateway_instance, raw_dump, serve, stop, wait_ready
from tests.support.web import Web

LIFETIME = 30  # seconds an inner access token lives (expiry is brought forward in the outer's database)
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PEOPLE = ("admin@example.com", "ada@example.com", "bob@example.com")


@pytest.fixture(scope="module")
def inner(tmp_path_factory, upstreams):
    """Portcullis under gunicorn with the upstream alpha; each person has a key granting it."""
    tmp = tmp_path_factory.mktemp("inner")
    port = free_port()
    setup = f"""
from app.models import User
from app.oauth_server import keys
from app.ops.keys import create_key
from app.ops.servers import create_server
server = create_server({{"name": "alpha", "url": "{upstreams['alpha']}"}})
for email in {PEOPLE!r}:
    user = User(email=email, role="member")
    user.set_password("{PASSWORD}")
    db.session.add(user)
    db.session.flush()
    create_key({{"name": "key of " + email, "owner_id": user.id,
                "mcp_servers": [{{"server_id": server.id, "tools": None}}]}}, source="api")
keys.ensure()
db.session.commit()
print("ok")
"""
    env, out = gateway_instance(str(tmp), port, setup, PORTCULLIS_BASE_URL=f"http://127.0.0.1:{port}",
                                PORTCULLIS_ACCESS_TOKEN_SECONDS=str(LIFETIME), PORTCULLIS_SWEEP="false",
                                PORTCULLIS_LOGIN_RATE_LIMIT="1000 per minute")
    assert out == "ok"
    proc = serve("wsgi:app", env, "--access-logfile", "/dev/null")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + "/login")
        yield {"url": base, "db": f"{tmp}/instance/portcullis.db"}
    finally:
        stop(proc)


def inner_consents(inner) -> list[tuple[str, bool]]:
    with sqlite3.connect(inner["db"]) as conn:
        return conn.execute("SELECT u.email, c.revoked_at IS NULL FROM oauth_consents c JOIN users u "
                            "ON u.id = c.user_id ORDER BY c.id").fetchall()


def consent_at_inner(url: str, email: str) -> str:
    """Play the person's browser at the inner instance: log in, approve as themselves (user
    mode); return the redirect back to the outer instance (not followed)."""
    with httpx.Client(timeout=10) as browser:
        r = browser.get(url)
        for _ in range(5):
            if r.status_code not in (302, 303):
                break
            r = browser.get(urljoin(str(r.url), r.headers["Location"]))
        page = r.text
        if 'name="password"' in page:
            r = browser.post(str(r.url), data={"email": email, "password": PASSWORD,
                                                "csrf_token": CSRF_RE.search(page).group(1)})
            assert r.status_code in (302, 303), r.text[:300]
            r = browser.get(urljoin(str(r.url), r.headers["Location"]))
            page = r.text
        assert r.status_code == 200 and "Portcullis" in page, page[:500]
        r = browser.post(str(r.url), data={"decision": "approve", "mode": "user",
                                            "csrf_token": CSRF_RE.search(page).group(1)})
        assert r.status_code == 302, r.text[:300]
        return r.headers["Location"]


def connect(web: Web, flow_id: str, email: str) -> str:
    """Open the flow's page, continue to the upstream, consent there, come back: the page shown."""
    page = web.get(f"/connect/{flow_id}")
    assert page.status_code == 200 and "Continue to" in page.get_data(as_text=True)
    r = web.get(f"/connect/{flow_id}/authorize")
    assert r.status_code == 303, r.get_data(as_text=True)
    back = consent_at_inner(r.headers["Location"], email)
    parts = urlsplit(back)
    assert back.startswith("http://127.0.0.1:8080/connect/callback?") or parts.path == "/connect/callback", back
    q = parse_qs(parts.query)
    assert q["iss"] and q["state"][0].startswith(flow_id + ".")
    done = web.get(parts.path + "?" + parts.query)
    assert done.status_code == 200, done.get_data(as_text=True)
    return done.get_data(as_text=True)


@pytest.fixture
def world(app, client, inner, admin_id):
    """The outer instance: the inner's /mcp as a per_user_oauth server, connected once by the
    admin (which discovers its tools), and ada and bob with keys granting it."""
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": "inner", "url": inner["url"] + "/mcp", "auth_type": "per_user_oauth"})
        db.session.commit()
        sid = server.id
        flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin_id, sid))
    admin = Web(app.test_client()).login("admin@example.com")
    assert "Connected" in connect(admin, flow_id, "admin@example.com")
    with app.app_context():
        server = db.session.get(McpServer, sid)
        assert "alpha__echo" in {t["name"] for t in server.tools}
        reg = db.session.get(UpstreamOAuth, sid).registration
        assert reg["client"]["how"] == "dynamic" and reg["metadata"]["issuer"] == inner["url"]
    people = {}
    for email in ("ada@example.com", "bob@example.com"):
        uid = make_user(app, email)
        _, key = add_key(app, {sid: None}, name="key of " + email, owner_id=uid)
        rpc = Rpc(app.test_client(), key)
        rpc.initialize()
        people[email] = {"id": uid, "rpc": rpc, "web": Web(app.test_client()).login(email)}
    return {"server_id": sid, "people": people, "admin": admin}


def expire(app, cred_id: int) -> None:
    """The access token's stored expiry is brought to the past (as if its lifetime had run out)."""
    with app.app_context():
        db.session.execute(update(Credential).where(Credential.id == cred_id)
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    store.invalidate()  # (a statement, not the ORM: the hot path's cache would not know)


def echo(rpc: Rpc, text: str) -> dict:
    return rpc.call("tools/call", {"name": "inner__alpha__echo", "arguments": {"text": text}}).json


def cred_of(app, user_id: int) -> Credential:
    with app.app_context():
        row = db.session.scalar(select(Credential).where(Credential.user_id == user_id))
        if row is not None:
            db.session.expunge(row)
        return row


def test_each_person_connects_their_own_account_then_refresh_rotates(app, world, inner, caplog):
    caplog.set_level(logging.DEBUG)
    for email, person in world["people"].items():
        answer = echo(person["rpc"], "hello")
        meta = answer["result"]["_meta"]["portcullis/auth_required"]
        assert answer["result"]["isError"] and meta["kind"] == "oauth" and meta["server"] == "inner"
        assert meta["required_header_keys"] == [] and meta["stored_header_keys"] == []
        assert meta["submit_url"] == f"http://127.0.0.1:8080/connect/{meta['flow_id']}"
        assert "Connected" in connect(person["web"], meta["flow_id"], email)
        answer = echo(person["rpc"], f"as {email}")
        assert answer["result"]["content"][0]["text"] == f"as {email}", answer
    assert sorted(inner_consents(inner)) == [(e, True) for e in sorted(PEOPLE)]
    ada, bob = (cred_of(app, world["people"][e]["id"]) for e in ("ada@example.com", "bob@example.com"))
    assert ada.auth_kind == bob.auth_kind == "oauth" and ada.status == "active" and ada.scopes == ["mcp"]
    assert ada.values["access_token"] != bob.values["access_token"]
    assert ada.expires_at is not None and ada.header_keys == []

    # expiry: the next call refreshes once, and the rotated refresh token is stored
    assert utcnow() + timedelta(seconds=LIFETIME - 5) < ada.expires_at < utcnow() + timedelta(seconds=LIFETIME)
    expire(app, ada.id)
    answer = echo(world["people"]["ada@example.com"]["rpc"], "after expiry")
    assert answer["result"]["content"][0]["text"] == "after expiry", answer
    fresh = cred_of(app, world["people"]["ada@example.com"]["id"])
    assert fresh.values["access_token"] != ada.values["access_token"]
    assert fresh.values["refresh_token"] != ada.values["refresh_token"]
    assert fresh.expires_at > ada.expires_at and fresh.refresh_lease_until is None

    # canary: no token in the raw database, the log, the sessions API or page
    api = Api(app.test_client(), token_for(app, world["people"]["ada@example.com"]["id"]))
    listing = api.get("/sessions").get_data(as_text=True)
    page = world["people"]["ada@example.com"]["web"].get("/sessions").get_data(as_text=True)
    everything = raw_dump(app) + caplog.text + listing + page
    for secret in (fresh.values["access_token"], fresh.values["refresh_token"], ada.values["refresh_token"],
                   bob.values["access_token"], bob.values["refresh_token"]):
        assert secret not in everything
    rows = api.get("/sessions").get_json()["sessions"]
    assert [(r["auth_kind"], r["status"], r["scopes"]) for r in rows] == [("oauth", "active", ["mcp"])]
    assert rows[0]["expires_at"] and rows[0]["can_reauth"] is True


def test_dead_grant_needs_reauth_then_reconnect_and_revoke(app, world, inner):
    email = "ada@example.com"
    person = world["people"][email]
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    connect(person["web"], meta["flow_id"], email)
    assert echo(person["rpc"], "ok")["result"]["content"][0]["text"] == "ok"
    # the inner forgets the grant (the person revoked it there); the outer's token then expires
    with sqlite3.connect(inner["db"]) as conn:
        conn.execute("UPDATE oauth_consents SET revoked_at = CURRENT_TIMESTAMP, revoked_reason = 'revoked_by_user' "
                     "WHERE user_id = (SELECT id FROM users WHERE email = ?)", (email,))
    with app.app_context():
        db.session.execute(update(Credential).where(Credential.user_id == person["id"])
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    store.invalidate()  # (a statement, not the ORM: the hot path's cache would not know)
    answer = echo(person["rpc"], "after the grant died")
    assert "_meta" in answer["result"], answer
    meta = answer["result"]["_meta"]["portcullis/auth_required"]
    assert meta["kind"] == "oauth" and "no longer accepts" in answer["result"]["content"][0]["text"]
    assert cred_of(app, person["id"]).status == "needs_reauth"
    connect(person["web"], meta["flow_id"], email)
    assert cred_of(app, person["id"]).status == "active"
    assert echo(person["rpc"], "again")["result"]["content"][0]["text"] == "again"

    # revoke from the sessions API: gone here, and the inner's consent is revoked too
    api = Api(app.test_client(), token_for(app, person["id"]))
    row = api.get("/sessions").get_json()["sessions"][0]
    assert api.delete(f"/sessions/{row['id']}").status_code == 204
    assert cred_of(app, person["id"]) is None
    assert not [live for e, live in inner_consents(inner) if e == email][-1]


def test_a_refused_token_is_refreshed_once_after_reading_the_row_again(app, world, inner):
    """The upstream answers 401 (its token was revoked there) while the stored expiry says it is
    still good: the row is read again, refreshed, and the call is retried once."""
    email = "bob@example.com"
    person = world["people"][email]
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    connect(person["web"], meta["flow_id"], email)
    before = cred_of(app, person["id"])
    # spend the access token's validity at the inner: rotate its signing key out is heavy; instead
    # store a token the inner never issued (as if it had been revoked there)
    with app.app_context():
        cred = db.session.get(Credential, before.id)
        cred.values = {**cred.values, "access_token": "not-a-token-the-upstream-knows"}
        db.session.commit()
    store.invalidate()
    answer = echo(person["rpc"], "retried")
    assert answer["result"]["content"][0]["text"] == "retried", answer
    after = cred_of(app, person["id"])
    assert after.values["refresh_token"] != before.values["refresh_token"]


def test_shared_account_connected_once_by_an_admin_from_the_server_page(app, client, inner, admin_id, caplog):
    caplog.set_level(logging.DEBUG)
    admin = Web(app.test_client()).login("admin@example.com")
    r = admin.post("/servers/new", {"name": "team", "url": inner["url"] + "/mcp", "auth_type": "oauth",
                                    "enabled": "on", "oauth_scopes": "mcp"})
    assert r.status_code in (302, 303) and "/connect/" in r.headers["Location"], r.get_data(as_text=True)
    flow_id = r.headers["Location"].rsplit("/", 1)[1]
    assert "shared account" in connect(admin, flow_id, "bob@example.com")  # bob's account at the inner
    with app.app_context():
        server = db.session.scalar(select(McpServer).where(McpServer.name == "team"))
        sid = server.id
        assert "alpha__echo" in {t["name"] for t in server.tools}
        row = db.session.get(UpstreamOAuth, sid)
        assert row.status == "active" and row.connected_by_id == admin_id and row.scopes == ["mcp"]
        shared_token = row.token["access_token"]
    page = admin.get(f"/servers/{sid}").get_data(as_text=True)
    assert "Connected by <strong>admin@example.com</strong>" in page and "Reconnect the shared account" in page
    assert shared_token not in page

    # every caller uses it, with no flow of their own
    uid = make_user(app, "ada@example.com")
    _, key = add_key(app, {sid: None}, owner_id=uid)
    rpc = Rpc(app.test_client(), key)
    rpc.initialize()
    answer = rpc.call("tools/call", {"name": "team__alpha__echo", "arguments": {"text": "shared"}}).json
    assert answer["result"]["content"][0]["text"] == "shared"
    with app.app_context():
        assert db.session.scalar(select(Flow.id).where(Flow.status == "pending")) is None
        assert db.session.scalar(select(Credential.id)) is None

    # refresh-tools reads the tools with the shared token
    r = Api(app.test_client(), token_for(app, admin_id)).post(f"/mcp-servers/{sid}/refresh-tools")
    assert r.status_code == 200, r.get_json()

    # the upstream drops the grant: a tool error says an admin must connect it; no flow for the agent
    with app.app_context():
        db.session.execute(update(UpstreamOAuth).where(UpstreamOAuth.mcp_server_id == sid)
                           .values(status="needs_reauth"))
        db.session.commit()
    store.invalidate()
    answer = rpc.call("tools/call", {"name": "team__alpha__echo", "arguments": {"text": "x"}}).json
    assert answer["result"]["isError"] and "administrator must connect" in answer["result"]["content"][0]["text"]
    assert "_meta" not in answer["result"]
    assert shared_token not in raw_dump(app) + caplog.text


def test_creating_a_per_user_oauth_server_sends_the_admin_through_consent(app, inner, admin_id):
    admin = Web(app.test_client()).login("admin@example.com")
    r = admin.post("/servers/new", {"name": "mine", "url": inner["url"] + "/mcp", "auth_type": "per_user_oauth",
                                    "enabled": "on"})
    assert r.status_code in (302, 303) and "/connect/" in r.headers["Location"]
    connect(admin, r.headers["Location"].rsplit("/", 1)[1], "admin@example.com")
    with app.app_context():
        server = db.session.scalar(select(McpServer).where(McpServer.name == "mine"))
        assert "alpha__echo" in {t["name"] for t in server.tools}
        cred = db.session.scalar(select(Credential).where(Credential.user_id == admin_id))
        assert cred.auth_kind == "oauth" and cred.mcp_server_id == server.id and cred.status in ("active", "orphaned")
        sid = server.id
    api = Api(app.test_client(), token_for(app, admin_id))
    assert api.post(f"/mcp-servers/{sid}/refresh-tools").status_code == 200
    # another admin without a connection of their own is told to connect first
    other = make_user(app, "other-admin@example.com", "admin")
    r = Api(app.test_client(), token_for(app, other)).post(f"/mcp-servers/{sid}/refresh-tools")
    assert r.status_code == 409 and "connect your account" in r.get_json()["error"]["message"]


# --- two instances at expiry: exactly one refresh -------------------------------------------

def inner_refresh_tokens(inner, email: str) -> list[tuple[int, bool]]:
    """(id, rotated) of the refresh tokens of the person's newest consent at the inner, while it
    is live (a reused refresh token would revoke it)."""
    with sqlite3.connect(inner["db"]) as conn:
        return conn.execute(
            "SELECT r.id, r.rotated_at IS NOT NULL FROM oauth_refresh_tokens r JOIN oauth_consents c ON "
            "c.id = r.consent_id WHERE c.revoked_at IS NULL AND c.id = (SELECT max(c2.id) FROM oauth_consents c2 "
            "JOIN users u ON u.id = c2.user_id WHERE u.email = ?) ORDER BY r.id", (email,)).fetchall()


@pytest.fixture
def outer_instances(app, encryption_key, tmp_path_factory):
    """Two gunicorn instances of the outer Portcullis on the test's PostgreSQL database, one
    deployment (the same PORTCULLIS_BASE_URL, hence the same redirect URI and registration)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("two instances share one PostgreSQL database")
    import os

    tmp = tmp_path_factory.mktemp("outer")
    procs, bases = [], []
    for name in ("a", "b"):
        port = free_port()
        env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": str(tmp / name), "PORT": str(port),
               "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "SECRET_KEY": "outer-test-secret",
               "PORTCULLIS_ENCRYPTION_KEY": encryption_key, "PORTCULLIS_BASE_URL": "http://127.0.0.1:8080",
               "PORTCULLIS_THREADS": "10", "PORTCULLIS_SWEEP": "false"}
        env.pop("REDIS_URL", None)
        procs.append(serve("wsgi:app", env, "--access-logfile", "/dev/null",
                           stdout=open(tmp / f"{name}.log", "w"), stderr=subprocess.STDOUT))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for proc, base in zip(procs, bases):
            wait_ready(proc, base + "/login")
        yield bases
    finally:
        for proc in procs:
            stop(proc)


def test_twenty_calls_on_two_instances_at_expiry_spend_one_refresh(app, world, inner, outer_instances):
    email = "ada@example.com"
    person = world["people"][email]
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    connect(person["web"], meta["flow_id"], email)
    with app.app_context():
        key_secret = person["rpc"].key
        db.session.execute(update(Credential).where(Credential.user_id == person["id"])
                           .values(expires_at=utcnow() - timedelta(seconds=1)))  # it expired
        db.session.commit()
    before = cred_of(app, person["id"])
    spent_before = inner_refresh_tokens(inner, email)
    assert [rotated for _, rotated in spent_before] == [False]

    # 20 MCP sessions, ten on each instance, opened first; then every call at the same moment
    sessions = []
    for i in range(20):
        base = outer_instances[i % 2]
        http = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key_secret}",
                                                                  "Accept": "application/json, text/event-stream"})
        r = http.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert r.status_code == 200, r.text
        http.headers["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
        http.headers["MCP-Protocol-Version"] = "2025-11-25"
        assert http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        sessions.append(http)
    barrier = threading.Barrier(len(sessions))
    answers: list = [None] * len(sessions)

    def call(i: int) -> None:
        barrier.wait(timeout=30)
        r = sessions[i].post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "inner__alpha__echo", "arguments": {"text": f"call {i}"}}})
        answers[i] = r.json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for http in sessions:
        http.close()
    assert [a["result"]["content"][0]["text"] for a in answers] == [f"call {i}" for i in range(20)], answers
    spent_after = inner_refresh_tokens(inner, email)
    # exactly one refresh: the first token rotated once, one new token issued, the consent still live
    assert [rotated for _, rotated in spent_after] == [True, False], spent_after
    after = cred_of(app, person["id"])
    assert after.values["refresh_token"] != before.values["refresh_token"]
    assert after.expires_at > utcnow() and after.refresh_lease_until is None


# --- the callback's checks, the registration kept apart, the client metadata document ----------

def _to_callback(web: Web, flow_id: str, email: str) -> str:
    r = web.get(f"/connect/{flow_id}/authorize")
    assert r.status_code == 303
    back = urlsplit(consent_at_inner(r.headers["Location"], email))
    return back.path + "?" + back.query


def test_callback_checks_state_iss_and_the_person(app, world, inner):
    email = "ada@example.com"
    person = world["people"][email]
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    back = _to_callback(person["web"], meta["flow_id"], email)
    q = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    tampered_state = back.replace(q["state"], q["state"][:-2] + ("AA" if not q["state"].endswith("AA") else "BB"))
    assert person["web"].get(tampered_state).status_code == 403
    other_iss = back.replace("iss=", "iss=https%3A%2F%2Fevil.example.com&was=")
    assert person["web"].get(other_iss).status_code == 403
    # bob cannot complete ada's flow with his login
    assert world["people"]["bob@example.com"]["web"].get(back).status_code == 403
    assert person["web"].get("/connect/callback?state=nope&code=x").status_code == 400
    assert cred_of(app, person["id"]) is None  # nothing stored by any of these
    assert "Connected" in person["web"].get(back).get_data(as_text=True)
    assert person["web"].get(back).status_code == 410  # used
    # the upstream refusing: an error answer stores nothing
    meta = echo(world["people"]["bob@example.com"]["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    bob = world["people"]["bob@example.com"]["web"]
    bob.get(f"/connect/{meta['flow_id']}/authorize")
    with app.app_context():
        nonce = db.session.get(Flow, meta["flow_id"]).oauth["nonce"]
    r = bob.get(f"/connect/callback?state={meta['flow_id']}.{nonce}&error=access_denied")
    assert r.status_code == 400 and cred_of(app, world["people"]["bob@example.com"]["id"]) is None


def test_editing_oauth_settings_keeps_the_registration(app, world, admin_id):
    sid = world["server_id"]
    api = Api(app.test_client(), token_for(app, admin_id))
    with app.app_context():
        before = db.session.get(UpstreamOAuth, sid).registration["client"]
    r = api.patch(f"/mcp-servers/{sid}", json={"oauth": {"scopes": ["mcp"]}})
    assert r.status_code == 200, r.get_json()
    meta = echo(world["people"]["ada@example.com"]["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    connect(world["people"]["ada@example.com"]["web"], meta["flow_id"], "ada@example.com")
    with app.app_context():
        assert db.session.get(UpstreamOAuth, sid).registration["client"] == before


def test_client_metadata_document_only_on_an_https_base_url(app, client):
    from app.upstream_oauth import registration

    assert client.get("/connect/client-metadata.json").status_code == 404  # http://127.0.0.1:8080
    saved = app.config["PORTCULLIS_BASE_URL"]
    app.config["PORTCULLIS_BASE_URL"] = "https://gateway.example.com"
    try:
        r = client.get("/connect/client-metadata.json")
        doc = r.get_json()
        assert r.status_code == 200 and doc["client_id"] == "https://gateway.example.com/connect/client-metadata.json"
        assert doc["redirect_uris"] == ["https://gateway.example.com/connect/callback"]
        assert doc["token_endpoint_auth_method"] == "none"
        with app.test_request_context():
            assert registration._client({"client_id_metadata_document_supported": True})["how"] == "metadata_document"
        app.config["PORTCULLIS_BASE_URL"] = "https://127.0.0.1:8443"
        assert client.get("/connect/client-metadata.json").status_code == 404
    finally:
        app.config["PORTCULLIS_BASE_URL"] = saved


def test_a_member_connects_from_the_sessions_page(app, world, inner):
    email = "bob@example.com"
    person = world["people"][email]
    page = person["web"].get("/sessions").get_data(as_text=True)
    assert 'name="server_id" value="%d"' % world["server_id"] in page  # offered: granted, not connected yet
    r = person["web"].post("/sessions/connect", {"server_id": str(world["server_id"])})
    assert r.status_code in (302, 303)
    flow_id = r.headers["Location"].rsplit("/connect/", 1)[1]
    assert "Connected" in connect(person["web"], flow_id, email)
    assert echo(person["rpc"], "from sessions")["result"]["content"][0]["text"] == "from sessions"
    page = person["web"].get("/sessions").get_data(as_text=True)
    assert "oauth credential" in page and "scopes: mcp" in page and "token expires" in page


def test_an_oauth_flow_takes_no_header_values(app, world):
    person = world["people"]["ada@example.com"]
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    api = Api(app.test_client(), token_for(app, person["id"]))
    r = api.put(f"/header-flows/{meta['flow_id']}", json={"headers": {}})
    assert r.status_code == 400 and cred_of(app, person["id"]) is None
    assert person["web"].post(f"/connect/{meta['flow_id']}", {}).status_code == 405


# --- admin-entered endpoints (an upstream without metadata) ---------------------------------

def register_at_inner(inner) -> str:
    """A public client registered at the inner by hand, as an admin would before entering it."""
    r = httpx.post(inner["url"] + "/oauth/register", timeout=10, json={
        "client_name": "entered by an admin", "redirect_uris": ["http://127.0.0.1:8080/connect/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"})
    assert r.status_code == 201, r.text
    return r.json()["client_id"]


def test_admin_entered_endpoints_replace_discovery(app, inner, admin_id):
    api = Api(app.test_client(), token_for(app, admin_id))
    endpoints = {"authorization_endpoint": inner["url"] + "/oauth/authorize",
                 "token_endpoint": inner["url"] + "/oauth/token", "revocation_endpoint": inner["url"] + "/oauth/revoke"}
    base = {"name": "entered", "url": inner["url"] + "/mcp", "auth_type": "per_user_oauth"}
    # validated: https or loopback http, both endpoints together, and a client id to use them with
    for oauth, words in (({**endpoints, "token_endpoint": "http://auth.example.com/token", "client_id": "c"}, "https"),
                         ({"authorization_endpoint": endpoints["authorization_endpoint"], "client_id": "c"}, "together"),
                         ({"revocation_endpoint": endpoints["revocation_endpoint"], "client_id": "c"}, "together"),
                         ({**endpoints, "authorization_endpoint": "ftp://x/y", "client_id": "c"}, "http"),
                         (endpoints, "client_id")):
        r = api.post("/mcp-servers", {**base, "oauth": oauth})
        assert r.status_code == 422 and words in r.get_data(as_text=True), (oauth, r.get_json())
    with app.app_context():
        assert db.session.scalar(select(McpServer.id).where(McpServer.name == "entered")) is None

    from app.ops.servers import create_server
    client_id = register_at_inner(inner)
    with app.app_context():
        server = create_server({**base, "oauth": {**endpoints, "client_id": client_id}})
        db.session.commit()
        sid = server.id
    shown = api.get(f"/mcp-servers/{sid}").get_json()["oauth"]
    assert {k: shown[k] for k in endpoints} == endpoints and shown["client_id"] == client_id
    admin = Web(app.test_client()).login("admin@example.com")
    form = admin.get(f"/servers/{sid}").get_data(as_text=True)
    assert all(f'value="{v}"' in form for v in endpoints.values())

    with app.app_context():
        flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin_id, sid))
    assert "Connected" in connect(admin, flow_id, "admin@example.com")
    with app.app_context():
        reg = db.session.get(UpstreamOAuth, sid).registration
        assert reg["client"] == {"how": "admin"} and reg["resource_metadata"] is None  # nothing discovered
        assert reg["metadata"] == {**endpoints, "issuer": None}
        assert "alpha__echo" in {t["name"] for t in db.session.get(McpServer, sid).tools}
        cred = db.session.scalar(select(Credential).where(Credential.user_id == admin_id))
        assert cred.auth_kind == "oauth" and cred.values["access_token"]
    # editable: a PATCH of other endpoints is a new registration state on the next connection
    r = api.patch(f"/mcp-servers/{sid}", {"oauth": {**endpoints, "client_id": client_id,
                                                    "revocation_endpoint": inner["url"] + "/oauth/revoke?x=1"}})
    assert r.status_code == 200 and r.get_json()["oauth"]["revocation_endpoint"].endswith("?x=1"), r.get_json()


def test_upstream_forgot_our_client_registers_again(app, world, inner):
    """The inner answers invalid_client at the refresh (it forgot Portcullis's registration): the
    credential needs re-authentication and the stored registration is dropped, so the next
    connection registers a new client."""
    email = "ada@example.com"
    person = world["people"][email]
    connect(person["web"], echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]["flow_id"], email)
    with app.app_context():
        old_client = db.session.get(UpstreamOAuth, world["server_id"]).registration["client"]["client_id"]
    with sqlite3.connect(inner["db"]) as conn:
        conn.execute("UPDATE oauth_clients SET client_id = client_id || '-forgotten' WHERE client_id = ?", (old_client,))
    expire(app, cred_of(app, person["id"]).id)
    answer = echo(person["rpc"], "after the upstream forgot us")
    meta = answer["result"]["_meta"]["portcullis/auth_required"]
    assert meta["kind"] == "oauth" and cred_of(app, person["id"]).status == "needs_reauth"
    with app.app_context():
        assert db.session.get(UpstreamOAuth, world["server_id"]).registration is None
    # at the code exchange too: consent given, then the upstream forgets the client before the callback
    callback = _to_callback(person["web"], meta["flow_id"], email)
    with app.app_context():
        second = db.session.get(UpstreamOAuth, world["server_id"]).registration["client"]["client_id"]
    assert second != old_client
    with sqlite3.connect(inner["db"]) as conn:
        conn.execute("UPDATE oauth_clients SET client_id = client_id || '-forgotten' WHERE client_id = ?", (second,))
    r = person["web"].get(callback)
    assert r.status_code == 502 and "invalid_client" in r.get_data(as_text=True), r.get_data(as_text=True)[:300]
    with app.app_context():
        assert db.session.get(UpstreamOAuth, world["server_id"]).registration is None
    meta = echo(person["rpc"], "x")["result"]["_meta"]["portcullis/auth_required"]
    connect(person["web"], meta["flow_id"], email)
    with app.app_context():
        reg = db.session.get(UpstreamOAuth, world["server_id"]).registration
        assert reg["client"]["how"] == "dynamic" and reg["client"]["client_id"] not in (old_client, second)
    assert cred_of(app, person["id"]).status == "active"
    assert echo(person["rpc"], "again")["result"]["content"][0]["text"] == "again"


def test_deleting_an_oauth_server_revokes_its_shared_token_at_the_upstream(app, inner, admin_id):
    admin = Web(app.test_client()).login("admin@example.com")
    r = admin.post("/servers/new", {"name": "gone", "url": inner["url"] + "/mcp", "auth_type": "oauth",
                                    "enabled": "on"})
    assert r.status_code in (302, 303) and "/connect/" in r.headers["Location"]
    connect(admin, r.headers["Location"].rsplit("/", 1)[1], "bob@example.com")
    assert [live for e, live in inner_consents(inner) if e == "bob@example.com"][-1]
    with app.app_context():
        sid = db.session.scalar(select(McpServer.id).where(McpServer.name == "gone"))
    assert Api(app.test_client(), token_for(app, admin_id)).delete(f"/mcp-servers/{sid}").status_code == 204
    assert not [live for e, live in inner_consents(inner) if e == "bob@example.com"][-1]
    with app.app_context():
        assert db.session.get(McpServer, sid) is None and db.session.get(UpstreamOAuth, sid) is None
