"""Scope step-up (RFC 6750 insufficient_scope, the MCP authorization spec's step-up) against the
real oidc-provider: the upstream needs ``mcp:tools`` for everything and ``mcp:write`` too for its
``write`` tool, answering 403 ``WWW-Authenticate: Bearer error="insufficient_scope",
scope="mcp:tools mcp:write"`` otherwise. A person's call of ``write`` gets the auth-required answer
of a first connection for a new consent asking both scopes, while their token keeps serving the
other tools; after the consent ``write`` works, and keeps working after a refresh (which asks no
narrower scope). A shared ``oauth`` server answers a tool error for an admin instead (no flow)."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from app.credentials.bindings import Binding
from app.credentials.resolvers import resolver
from app.extensions import db
from app.models import Credential, Flow, McpServer, User
from tests.conftest import make_user
from tests.support.mcp import Rpc, add_key, stop
from tests.support.oidc_provider import HttpxBrowser, start_protected_upstream
from tests.support.web import Web
from tests.upstream_oauth.test_oidc import CALLBACK, cred_of, expire

SCOPES = "mcp:tools mcp:write"


@pytest.fixture(scope="module")
def provider(oidc_provider_factory):
    return oidc_provider_factory(resource_scope=SCOPES)


@pytest.fixture(scope="module")
def upstream(provider):
    proc, url = start_protected_upstream(provider.issuer, "--step-up", "write=mcp:write")
    yield url
    stop(proc)


def connect(web: Web, flow_id: str, login: str) -> dict:
    """Through the provider's login and consent; the scope the authorization URL asked."""
    r = web.get(f"/connect/{flow_id}/authorize")
    assert r.status_code == 303, r.get_data(as_text=True)
    asked = parse_qs(urlsplit(r.headers["Location"]).query)["scope"][0].split()
    result = HttpxBrowser(login).authorize(r.headers["Location"], stop_at=CALLBACK)
    assert result.code, result.params
    back = urlsplit(result.url)
    done = web.get(back.path + "?" + back.query)
    assert done.status_code == 200, done.get_data(as_text=True)
    return {"asked": asked, "page": done.get_data(as_text=True)}


def call(rpc: Rpc, tool: str) -> dict:
    args = {"text": "hi"} if tool != "whoami" else {}
    return rpc.call("tools/call", {"name": f"up__{tool}", "arguments": args}).json


def make_server(app, admin_id, url, auth_type):
    from app.ops.servers import create_server
    from app.upstream_oauth.connect import start_shared

    with app.app_context():
        server = create_server({"name": "up", "url": url, "auth_type": auth_type})
        db.session.commit()
        sid = server.id
        if auth_type == "oauth":
            flow_id, _ = start_shared(sid, db.session.get(User, admin_id))
        else:
            flow_id, _ = resolver(auth_type).start_flow(Binding("user", admin_id, sid))
    admin = Web(app.test_client()).login("admin@example.com")
    first = connect(admin, flow_id, "alice@example.com")
    assert first["asked"] == ["mcp:tools"]
    with app.app_context():
        assert "write" in {t["name"] for t in db.session.get(McpServer, sid).tools}
    return sid


def test_per_user_step_up_asks_the_union_keeps_the_token_then_works(app, admin_id, provider, upstream):
    sid = make_server(app, admin_id, upstream, "per_user_oauth")
    uid = make_user(app, "ada@example.com")
    _, key = add_key(app, {sid: None}, name="ada's", owner_id=uid)
    rpc = Rpc(app.test_client(), key)
    rpc.initialize()
    web = Web(app.test_client()).login("ada@example.com")
    meta = call(rpc, "whoami")["result"]["_meta"]["portcullis/auth_required"]
    connect(web, meta["flow_id"], "ada@example.com")
    assert call(rpc, "whoami")["result"]["structuredContent"]["scopes"] == ["mcp:tools"]
    before = cred_of(app, uid)
    assert before.scopes == ["mcp:tools"]

    answer = call(rpc, "write")
    result = answer["result"]
    assert result["isError"], answer
    meta = result["_meta"]["portcullis/auth_required"]
    assert meta["kind"] == "oauth" and meta["server"] == "up" and meta["required_header_keys"] == []
    assert "mcp:write" in result["content"][0]["text"]
    # the stored token stays usable for what it could do
    after = cred_of(app, uid)
    assert after.status == "active" and after.values == before.values
    assert call(rpc, "whoami")["result"]["structuredContent"]["sub"] == "ada@example.com"

    # a client with URL-mode elicitation gets the -32042 form of the same answer
    other = Rpc(app.test_client(), key)
    r = other.raw({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}},
        "clientInfo": {"name": "t", "version": "1"}}})
    other.session = r.headers["Mcp-Session-Id"]
    other.raw({"jsonrpc": "2.0", "method": "notifications/initialized"})
    error = call(other, "write")["error"]
    assert error["code"] == -32042 and error["data"]["elicitations"][0]["url"].endswith("/connect/" + meta["flow_id"])

    done = connect(web, meta["flow_id"], "ada@example.com")
    assert done["asked"] == ["mcp:tools", "mcp:write"]  # the union of the stored and the challenged scopes
    assert "Connected" in done["page"]
    assert call(rpc, "write")["result"]["content"][0]["text"] == "written: hi"
    wider = cred_of(app, uid)
    assert sorted(wider.scopes) == ["mcp:tools", "mcp:write"]

    # a refresh keeps the wider grant (no narrower scope is asked on refresh)
    expire(app, wider.id)
    assert call(rpc, "write")["result"]["content"][0]["text"] == "written: hi"
    assert cred_of(app, uid).values["access_token"] != wider.values["access_token"]

    # the upstream drops the grant (invalid_grant): the reconnection asks the wider scope again,
    # not the server's default one (the person is not sent back for mcp:write a second time)
    with app.app_context():
        row = db.session.get(Credential, wider.id)
        row.values = {**row.values, "refresh_token": "no-longer-valid"}
        db.session.commit()
    expire(app, wider.id)
    result = call(rpc, "whoami")["result"]
    assert cred_of(app, uid).status == "needs_reauth"
    again = connect(web, result["_meta"]["portcullis/auth_required"]["flow_id"], "ada@example.com")
    assert again["asked"] == ["mcp:tools", "mcp:write"]
    assert call(rpc, "write")["result"]["content"][0]["text"] == "written: hi"


def test_shared_step_up_is_a_tool_error_for_an_admin(app, admin_id, provider, upstream):
    sid = make_server(app, admin_id, upstream, "oauth")
    _, key = add_key(app, {sid: None}, name="bot")
    rpc = Rpc(app.test_client(), key)
    rpc.initialize()
    assert call(rpc, "whoami")["result"]["structuredContent"]["sub"] == "alice@example.com"
    with app.app_context():
        flows_before = db.session.scalar(select(func.count()).select_from(Flow))
    result = call(rpc, "write")["result"]
    assert result["isError"] and "_meta" not in result
    text = result["content"][0]["text"]
    assert "administrator must reconnect" in text and "mcp:write" in text
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Flow)) == flows_before
        assert db.session.scalar(select(func.count()).select_from(Credential)) == 0
    assert call(rpc, "whoami")["result"]["structuredContent"]["sub"] == "alice@example.com"
