"""End to end against an authorization server nobody here wrote: npm `oidc-provider` (certified
OpenID provider, Node 22) in front of an `mcp` SDK upstream that verifies its JWTs (signature,
iss, aud = its own URL, exp). Portcullis knows only the upstream's URL: it discovers the provider
from the 401, registers dynamically, sends each person through the provider's login and consent,
and the upstream's `whoami` tells whose token arrived. Then expiry and refresh (rotation stored),
a refused token refreshed after re-reading the row, invalid_grant -> needs_reauth -> reconnect,
reconciliation (a lost grant orphans the credential), revocation here and at the provider, and
one run in headless Chromium through the provider's real pages (a vk link with #t=)."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import select, update

from app.credentials import store
from app.credentials.bindings import Binding
from app.credentials.resolvers import resolver
from app.extensions import db
from app.models import Credential, McpServer, UpstreamOAuth
from app.models.base import utcnow
from tests.conftest import Api, make_user, token_for
from tests.support.mcp import Rpc, add_key, raw_dump
from tests.support.oidc_provider import HttpxBrowser
from tests.support.web import Web

CALLBACK = "http://127.0.0.1:8080/connect/callback"  # the test app's PORTCULLIS_BASE_URL


def connect(web: Web, flow_id: str, login: str, browser: HttpxBrowser | None = None) -> str:
    r = web.get(f"/connect/{flow_id}/authorize")
    assert r.status_code == 303, r.get_data(as_text=True)
    result = (browser or HttpxBrowser(login)).authorize(r.headers["Location"], stop_at=CALLBACK)
    assert result.code and result.iss, result.params
    back = urlsplit(result.url)
    done = web.get(back.path + "?" + back.query)
    assert done.status_code == 200, done.get_data(as_text=True)
    return done.get_data(as_text=True)


def whoami(rpc: Rpc) -> dict:
    return rpc.call("tools/call", {"name": "up__whoami", "arguments": {}}).json


def cred_of(app, user_id: int) -> Credential | None:
    with app.app_context():
        row = db.session.scalar(select(Credential).where(Credential.user_id == user_id))
        if row is not None:
            db.session.expunge(row)
        return row


def expire(app, cred_id: int) -> None:
    with app.app_context():
        db.session.execute(update(Credential).where(Credential.id == cred_id).values(expires_at=utcnow()))
        db.session.commit()
    store.invalidate()


@pytest.fixture
def world(app, admin_id, oidc_provider, protected_upstream):
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": "up", "url": protected_upstream, "auth_type": "per_user_oauth"})
        db.session.commit()
        sid = server.id
        flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin_id, sid))
    admin = Web(app.test_client()).login("admin@example.com")
    assert "Connected" in connect(admin, flow_id, "alice@example.com")
    with app.app_context():
        assert {t["name"] for t in db.session.get(McpServer, sid).tools} >= {"whoami", "echo"}
        reg = db.session.get(UpstreamOAuth, sid).registration
        assert reg["client"]["how"] == "dynamic" and reg["metadata"]["issuer"] == oidc_provider.issuer
    people = {}
    for email in ("ada@example.com", "bob@example.com"):
        uid = make_user(app, email)
        kid, key = add_key(app, {sid: None}, name="key of " + email, owner_id=uid)
        rpc = Rpc(app.test_client(), key)
        rpc.initialize()
        people[email] = {"id": uid, "key_id": kid, "rpc": rpc, "web": Web(app.test_client()).login(email)}
    return {"server_id": sid, "people": people, "client_id": reg["client"]["client_id"]}


def test_two_people_their_own_tokens_refresh_rotation_and_canaries(app, world, oidc_provider, caplog):
    caplog.set_level(logging.DEBUG)
    for email, person in world["people"].items():
        answer = whoami(person["rpc"])
        meta = answer["result"]["_meta"]["portcullis/auth_required"]
        assert meta["kind"] == "oauth" and meta["required_header_keys"] == []
        assert "Connected" in connect(person["web"], meta["flow_id"], email)
        who = whoami(person["rpc"])["result"]["structuredContent"]
        assert who["sub"] == email and who["scopes"] == ["mcp:tools"] and who["client_id"] == world["client_id"]
    ada = cred_of(app, world["people"]["ada@example.com"]["id"])
    assert ada.scopes == ["mcp:tools"] and ada.values["refresh_token"]

    expire(app, ada.id)
    assert whoami(world["people"]["ada@example.com"]["rpc"])["result"]["structuredContent"]["sub"] == "ada@example.com"
    fresh = cred_of(app, ada.id and world["people"]["ada@example.com"]["id"])
    assert fresh.values["refresh_token"] != ada.values["refresh_token"]  # the provider rotated it; stored
    assert fresh.values["access_token"] != ada.values["access_token"] and fresh.expires_at > utcnow()
    # the rotated-out refresh token is dead at the provider (reusing it would revoke the grant: not tried)

    # a token the upstream refuses (401) although not expired here: re-read, refresh, retry once
    with app.app_context():
        row = db.session.get(Credential, fresh.id)
        row.values = {**row.values, "access_token": "revoked-elsewhere"}
        db.session.commit()
    assert whoami(world["people"]["ada@example.com"]["rpc"])["result"]["structuredContent"]["sub"] == "ada@example.com"

    bob = cred_of(app, world["people"]["bob@example.com"]["id"])
    latest = cred_of(app, world["people"]["ada@example.com"]["id"])
    api = Api(app.test_client(), token_for(app, world["people"]["ada@example.com"]["id"]))
    rows = api.get("/sessions").get_json()["sessions"]
    assert [(r["auth_kind"], r["status"], r["scopes"]) for r in rows] == [("oauth", "active", ["mcp:tools"])]
    everything = (raw_dump(app) + caplog.text + api.get("/sessions").get_data(as_text=True)
                  + world["people"]["ada@example.com"]["web"].get("/sessions").get_data(as_text=True))
    for secret in {ada.values["access_token"], ada.values["refresh_token"], latest.values["access_token"],
                   latest.values["refresh_token"], bob.values["access_token"], bob.values["refresh_token"]}:
        assert secret not in everything


def test_invalid_grant_needs_reauth_reconnect_reconcile_revoke(app, world, oidc_provider):
    email = "ada@example.com"
    person = world["people"][email]
    meta = whoami(person["rpc"])["result"]["_meta"]["portcullis/auth_required"]
    connect(person["web"], meta["flow_id"], email)
    cred = cred_of(app, person["id"])
    # the person revokes the grant at the provider; the token then expires here
    r = httpx.post(oidc_provider.discovery()["revocation_endpoint"], timeout=10,
                   data={"token": cred.values["refresh_token"], "client_id": world["client_id"]})
    assert r.status_code == 200
    expire(app, cred.id)
    answer = whoami(person["rpc"])
    assert answer["result"]["isError"] and answer["result"]["_meta"]["portcullis/auth_required"]["kind"] == "oauth"
    assert cred_of(app, person["id"]).status == "needs_reauth"
    api = Api(app.test_client(), token_for(app, person["id"]))
    rows = api.get("/sessions").get_json()["sessions"]
    assert [r["kind"] for r in rows] == ["flow", "credential"]  # the flow the answer started, listed too
    row = rows[1]
    assert row["status"] == "needs_reauth" and row["can_reauth"] is True
    reauth = api.post(f"/sessions/{row['id']}/reauth")
    assert reauth.status_code == 200, reauth.get_json()
    connect(person["web"], reauth.get_json()["flow_id"], email)
    assert cred_of(app, person["id"]).status == "active"
    assert whoami(person["rpc"])["result"]["structuredContent"]["sub"] == email

    # reconciliation: the key that granted the server goes, the credential is orphaned (kept)
    admin_api = Api(app.test_client(), token_for(app, make_user(app, "boss@example.com", "admin")))
    assert admin_api.delete(f"/virtual-keys/{person['key_id']}").status_code == 204
    assert cred_of(app, person["id"]).status == "orphaned"

    # revoke: gone here, then revoked at the provider (its refresh token no longer works)
    cred = cred_of(app, person["id"])
    row = api.get("/sessions?kind=credential").get_json()["sessions"][0]
    assert api.delete(f"/sessions/{row['id']}").status_code == 204
    assert cred_of(app, person["id"]) is None
    r = oidc_provider.token({"grant_type": "refresh_token", "refresh_token": cred.values["refresh_token"],
                             "client_id": world["client_id"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_vk_link_through_the_providers_pages_in_chromium(app, live_server, oidc_provider, protected_upstream,
                                                        browser_context, browser_problems):
    """A key without owner: the #t= link in Chromium, the token moved into a header by the page,
    Continue, the provider's own login and consent, back to /connect/callback, Connected."""
    saved = app.config["PORTCULLIS_BASE_URL"]
    app.config["PORTCULLIS_BASE_URL"] = live_server  # the redirect URI must reach this browser's server
    try:
        with app.app_context():
            from app.ops.servers import create_server

            server = create_server({"name": "up", "url": protected_upstream, "auth_type": "per_user_oauth"})
            server.tools = [{"name": "whoami", "inputSchema": {"type": "object"}}]
            server.tools_refreshed_at = utcnow()
            db.session.commit()
            sid = server.id
        _, key = add_key(app, {sid: None}, name="ci-bot")
        rpc = Rpc(app.test_client(), key)
        rpc.initialize()
        link = whoami(rpc)["result"]["_meta"]["portcullis/auth_required"]["submit_url"]
        assert link.startswith(live_server + "/connect/") and "#t=" in link
        token = link.split("#t=", 1)[1]
        browser_problems.expect(r"404 .*favicon\.ico")  # the provider's pages have no icon
        page = browser_context().new_page()
        page.set_default_timeout(15000)
        seen = []
        page.on("request", lambda req: seen.append(req.url))
        page.goto(link)
        expect(page.locator("#connect-whose")).to_contain_text("the virtual key ci-bot (no owner)")
        page.click("#connect-go")
        page.fill("#login", "carol@example.com")
        page.click("#sign-in")
        page.click("#confirm")
        expect(page.locator("#connect-body")).to_contain_text("is connected")
        assert not [u for u in seen if token in u]  # the flow token never travelled in a URL
        assert whoami(rpc)["result"]["structuredContent"]["sub"] == "carol@example.com"
        with app.app_context():
            cred = db.session.scalar(select(Credential))
            assert (cred.auth_mode, cred.auth_kind, cred.status) == ("vk", "oauth", "active")
    finally:
        app.config["PORTCULLIS_BASE_URL"] = saved
