"""/mcp with per_user_headers servers: the binding of the caller, the auth-required answer
(-32042 for clients with URL elicitation, an isError tool result otherwise), its pending flow,
and each person's own value reaching the upstream."""
from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Credential, Flow
from app.models.base import digest
from tests.conftest import make_user
from tests.support.mcp import Rpc, add_key, start_upstream, stop

SAMPLE, ALICE, BOB = "sample-4a1c", "alice-canary-8d2f", "bob-canary-19e0"


@pytest.fixture(scope="module")
def keyed_url():
    proc, url = start_upstream("--name", "keyed", *[a for v in (SAMPLE, ALICE, BOB)
                                                    for a in ("--require-header", f"X-Api-Key={v}")])
    yield url
    stop(proc)


@pytest.fixture
def server_id(app, keyed_url):
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": "keyed", "url": keyed_url, "auth_type": "per_user_headers",
                                "per_user_header_keys": ["X-Api-Key"], "sample_headers": {"x-api-key": SAMPLE}})
        db.session.commit()
        return server.id


def store(app, server_id, mode, identity, values, status="active"):
    col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}[mode]
    with app.app_context():
        db.session.add(Credential(auth_mode=mode, mcp_server_id=server_id, status=status, values=values,
                                  header_keys=sorted(values), **{col: identity}))
        db.session.commit()


def flows(app):
    with app.app_context():
        return list(db.session.scalars(select(Flow)))


def call(rpc, name="keyed__headers"):
    r = rpc.call("tools/call", {"name": name, "arguments": {}})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def test_tool_result_form_for_a_user_binding(app, client, server_id):
    uid = make_user(app, "alice@example.com")
    _, secret = add_key(app, {server_id: None}, owner_id=uid)
    rpc = Rpc(client, secret)
    rpc.initialize()
    result = call(rpc)["result"]
    assert result["isError"] is True
    meta = result["_meta"]["portcullis/auth_required"]
    (flow,) = flows(app)
    assert meta == {"kind": "headers", "server": "keyed", "flow_id": flow.id,
                    "submit_url": f"{app.config['PORTCULLIS_BASE_URL']}/connect/{flow.id}",
                    "required_header_keys": ["x-api-key"], "stored_header_keys": []}
    assert meta["submit_url"] in result["content"][0]["text"]
    assert (flow.auth_mode, flow.user_id, flow.token_hash, flow.status) == ("user", uid, None, "pending")
    # a second call refreshes the same flow
    assert call(rpc)["result"]["_meta"]["portcullis/auth_required"]["flow_id"] == flow.id
    assert len(flows(app)) == 1
    # once stored, the call reaches the upstream with the person's own value
    store(app, server_id, "user", uid, {"x-api-key": ALICE})
    result = call(rpc)["result"]
    assert not result.get("isError"), result
    assert result["structuredContent"]["x-api-key"] == ALICE


def test_url_elicitation_form_for_a_vk_binding(app, client, server_id):
    kid, secret = add_key(app, {server_id: None})
    rpc = Rpc(client, secret)
    r = rpc.raw({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}},
        "clientInfo": {"name": "t", "version": "1"}}})
    rpc.session = r.headers["Mcp-Session-Id"]
    err = call(rpc)["error"]
    assert err["code"] == -32042
    (elicitation,) = err["data"]["elicitations"]
    (flow,) = flows(app)
    assert elicitation["mode"] == "url" and elicitation["elicitationId"] == flow.id and elicitation["message"]
    base, _, token = elicitation["url"].partition("#t=")
    assert base == f"{app.config['PORTCULLIS_BASE_URL']}/connect/{flow.id}" and len(token) > 30
    assert (flow.auth_mode, flow.virtual_key_id, flow.token_hash) == ("vk", kid, digest(token))
    store(app, server_id, "vk", kid, {"x-api-key": BOB})
    assert call(rpc)["result"]["structuredContent"]["x-api-key"] == BOB


@pytest.mark.parametrize("capabilities", [
    {"elicitation": {"form": {}}},  # form mode only
    {"elicitation": {}},  # 2025-11-25: an empty object means form mode only (the legacy declaration)
    {},  # no elicitation at all
], ids=["form", "empty", "none"])
def test_only_clients_declaring_url_elicitation_get_32042(app, client, server_id, capabilities):
    _, secret = add_key(app, {server_id: None})
    rpc = Rpc(client, secret)
    r = rpc.raw({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200, r.get_data(as_text=True)
    rpc.session = r.headers["Mcp-Session-Id"]
    answer = call(rpc)
    assert "error" not in answer, answer
    result = answer["result"]
    (flow,) = flows(app)
    assert result["isError"] is True and result["_meta"]["portcullis/auth_required"]["flow_id"] == flow.id


def test_two_users_each_with_their_own_value(app, client, server_id):
    """Everything is created first, so no commit between the calls clears the credential cache:
    A, B, A then shows that the cache is kept per caller (B never gets A's warm value)."""
    a, b = make_user(app, "a@example.com"), make_user(app, "b@example.com")
    store(app, server_id, "user", a, {"x-api-key": ALICE})
    store(app, server_id, "user", b, {"x-api-key": BOB})
    rpcs = {}
    for uid in (a, b):
        _, secret = add_key(app, {server_id: None}, owner_id=uid, name=f"k{uid}")
        rpcs[uid] = Rpc(client, secret)
        rpcs[uid].initialize()
    seen = [call(rpcs[uid])["result"]["structuredContent"]["x-api-key"] for uid in (a, b, a, b)]
    assert seen == [ALICE, BOB, ALICE, BOB]


def test_needs_update_and_missing_key_answer_auth_required(app, client, server_id):
    uid = make_user(app, "c@example.com")
    store(app, server_id, "user", uid, {"x-api-key": ALICE}, status="needs_update")
    _, secret = add_key(app, {server_id: None}, owner_id=uid)
    rpc = Rpc(client, secret)
    rpc.initialize()
    meta = call(rpc)["result"]["_meta"]["portcullis/auth_required"]
    assert meta["stored_header_keys"] == ["x-api-key"]
    with app.app_context():
        cred = db.session.scalar(select(Credential))
        cred.status, cred.values = "active", {"x-other": "v"}
        db.session.commit()
    meta = call(rpc)["result"]["_meta"]["portcullis/auth_required"]
    assert meta["stored_header_keys"] == [] and meta["required_header_keys"] == ["x-api-key"]


def test_anonymous_session_binding(app, client, server_id):
    app.config["PORTCULLIS_ENFORCE_AUTH"] = False
    try:
        from app.ops.servers import get_server

        with app.app_context():
            get_server(server_id).allow_on_all_virtual_keys = True
            db.session.commit()
        rpc = Rpc(client)
        rpc.initialize()
        meta = call(rpc)["result"]["_meta"]["portcullis/auth_required"]
        (flow,) = flows(app)
        assert (flow.auth_mode, flow.session_id) == ("session", rpc.session)
        assert "#t=" in meta["submit_url"]
        store(app, server_id, "session", rpc.session, {"x-api-key": ALICE})
        assert call(rpc)["result"]["structuredContent"]["x-api-key"] == ALICE
    finally:
        app.config["PORTCULLIS_ENFORCE_AUTH"] = True


def test_credential_served_from_memory_once_warm(app, client, server_id):
    uid = make_user(app, "d@example.com")
    store(app, server_id, "user", uid, {"x-api-key": ALICE})
    _, secret = add_key(app, {server_id: None}, owner_id=uid)
    rpc = Rpc(client, secret)
    rpc.initialize()
    call(rpc)
    statements = []
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine

    def note(conn, cursor, statement, *a):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        for _ in range(3):
            assert call(rpc)["result"]["structuredContent"]["x-api-key"] == ALICE
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert not [s for s in statements if "credentials" in s]
    # a revocation (commit deleting the row) is seen at once
    with app.app_context():
        db.session.delete(db.session.scalar(select(Credential)))
        db.session.commit()
    assert call(rpc)["result"]["isError"] is True


def test_values_never_in_logs_or_answers(app, client, server_id, caplog):
    caplog.set_level(logging.DEBUG)
    uid = make_user(app, "e@example.com")
    _, secret = add_key(app, {server_id: None}, owner_id=uid)
    rpc = Rpc(client, secret)
    rpc.initialize()
    store(app, server_id, "user", uid, {"x-api-key": ALICE})
    listing = rpc.call("tools/list")
    assert listing.status_code == 200 and listing.json["result"]["tools"], listing.json
    called = call(rpc)["result"]
    assert called["structuredContent"]["x-api-key"] == ALICE  # used upstream ...
    answers = json.dumps(listing.json)
    assert ALICE not in answers and ALICE not in caplog.text  # ... never in an answer of its own or a log
