"""/mcp at the JSON-RPC level: envelope errors, sessions, versions, origins, auth, and upstream
faults (down, slow, 500, garbage, dropped connection), through the Flask test client."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from app.extensions import db
from app.models import McpServer, VirtualKey
from app.models.base import utcnow
from tests.support.mcp import ACCEPT, Rpc, add_key, add_server, wait_for


@pytest.fixture
def alpha(app, upstreams):
    return add_server(app, "alpha", upstreams["alpha"])


@pytest.fixture
def rpc(app, client, alpha):
    _, key = add_key(app, {alpha: None})
    r = Rpc(client, key)
    r.initialize()
    return r


def test_envelope_errors(rpc):
    r = rpc.raw("{not json")
    assert r.status_code == 400 and r.json["error"]["code"] == -32700 and r.json["id"] is None
    r = rpc.raw([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert r.status_code == 400 and r.json["error"]["code"] == -32600
    r = rpc.raw({"jsonrpc": "1.0", "id": 1, "method": "ping"})
    assert r.status_code == 400 and r.json["error"]["code"] == -32600 and r.json["id"] == 1
    r = rpc.raw({"jsonrpc": "2.0", "id": 1})
    assert r.json["error"]["code"] == -32600
    r = rpc.raw({"jsonrpc": "2.0", "id": 1, "method": 7})
    assert r.json["error"]["code"] == -32600
    r = rpc.raw({"jsonrpc": "2.0", "method": "tools/list"})  # a request without id
    assert r.status_code == 400 and r.json["error"]["code"] == -32600
    for bad_id in (None, 1.5, True, {"a": 1}):
        r = rpc.raw({"jsonrpc": "2.0", "id": bad_id, "method": "ping"})
        assert r.status_code == 400 and r.json["error"]["code"] == -32600, bad_id
    r = rpc.call("tools/list", [1, 2])
    assert r.json["error"]["code"] == -32602
    for params in ({"name": 5}, {"name": "alpha__echo", "arguments": "x"}, {"name": "alpha__echo", "_meta": 1}, {}):
        r = rpc.call("tools/call", params)
        assert r.json["error"]["code"] == -32602, params
    r = rpc.call("server/discover", {})  # a 2026-07-28 method: its envelope is missing
    assert r.status_code == 400 and r.json["error"]["code"] == -32602
    assert rpc.call("sampling/createMessage", {}).json["error"]["code"] == -32601  # a client's method
    assert rpc.call("ping").json == {"jsonrpc": "2.0", "id": rpc._id, "result": {}}
    # A response (to a request we never sent) and unknown notifications are accepted silently.
    assert rpc.raw({"jsonrpc": "2.0", "id": 9, "result": {}}).status_code == 202
    assert rpc.raw({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}).status_code == 202


def test_unknown_method_is_refused_before_any_session(app, client, alpha):
    _, key = add_key(app, {alpha: None})
    r = Rpc(client, key).raw({"jsonrpc": "2.0", "id": 1, "method": "nothing/here", "params": {}})
    assert r.status_code == 200 and r.json["error"]["code"] == -32601
    # server/discover (MCP 2026-07-28, tests/mcp/test_mcp_2026.py) needs no session, only its envelope
    r = Rpc(client, key).raw({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
                             {"MCP-Protocol-Version": "2026-07-28"})
    assert r.status_code == 400 and r.json["error"]["code"] == -32602


def test_version_negotiation(app, client, alpha):
    _, key = add_key(app, {alpha: None})
    for asked, got in (("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"),
                       ("2024-11-05", "2025-11-25"), ("1999-01-01", "2025-11-25")):
        result = Rpc(client, key).initialize(asked)
        assert result["protocolVersion"] == got
        # what the upstream (the SDK's MCPServer) announced, on top of tools and logging
        assert result["capabilities"] == {"tools": {"listChanged": False}, "logging": {}, "completions": {},
                                          "prompts": {"listChanged": False},
                                          "resources": {"subscribe": True, "listChanged": False}}
        assert result["serverInfo"]["name"] == "portcullis"
    bad = Rpc(client, key)
    r = bad.raw({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 5}})
    assert r.json["error"]["code"] == -32602


def test_sessions(rpc, client, app, alpha):
    assert rpc.call("tools/list", extra={"MCP-Protocol-Version": "2030-01-01"}).status_code == 400
    assert rpc.call("tools/list", extra={"MCP-Protocol-Version": "2025-06-18"}).status_code == 200
    sid = rpc.session
    rpc.session = None
    r = rpc.call("tools/list")
    assert r.status_code == 400 and "Mcp-Session-Id" in r.json["error"]["message"]
    rpc.session = "0" * 64
    assert rpc.call("tools/list").status_code == 404
    # Another key cannot use this session.
    _, other = add_key(app, {alpha: None}, name="other")
    stranger = Rpc(client, other)
    stranger.session = sid
    assert stranger.call("tools/list").status_code == 404
    # Nor can the same key on another path.
    elsewhere = Rpc(client, rpc.key, "/mcp/alpha")
    elsewhere.session = sid
    assert elsewhere.call("tools/list").status_code == 404
    rpc.session = sid
    assert rpc.raw(None, method="DELETE").status_code == 204
    r = rpc.call("tools/list")
    assert r.status_code == 404 and r.json["error"]["code"] == -32001
    assert rpc.raw(None, method="DELETE").status_code == 404


@pytest.fixture
def other_worker(app, encryption_key):
    """A second Portcullis on the same database, as another gunicorn worker or instance would be:
    its in-memory caches never saw what the first one did."""
    from app import create_app

    other = create_app({"INSTANCE_PATH": app.instance_path, "TESTING": True, "SECRET_KEY": app.config["SECRET_KEY"],
                        "PORTCULLIS_ENCRYPTION_KEY": encryption_key,
                        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                        "PORTCULLIS_LOGIN_RATE_LIMIT": app.config["PORTCULLIS_LOGIN_RATE_LIMIT"]})
    assert other.extensions["mcp_sessions"] is not app.extensions["mcp_sessions"]
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_session_is_served_by_another_worker_from_the_database(app, client, upstreams, other_worker):
    """The session, its key, path, capabilities, log level and end are read from the database by a
    worker that did not create it."""
    import warnings

    from tests.support.mcp import UPSTREAM_KEY

    beta = add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})
    mine = add_server(app, "mine", upstreams["alpha"], auth_type="per_user_headers", per_user_header_keys=["x-k"],
                      sample_headers={"x-k": "sample"})
    _, key = add_key(app, {beta: None, mine: None})
    first = Rpc(client, key)
    r = first.raw({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}},
        "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200, r.get_data(as_text=True)
    first.session = r.headers["Mcp-Session-Id"]
    assert first.call("logging/setLevel", {"level": "warning"}).status_code == 200

    second = Rpc(other_worker.test_client(), key)
    second.session = first.session
    assert other_worker.extensions["mcp_sessions"]._cache == {}  # it never saw the session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = second.call("tools/call", {"name": "beta__chatty", "arguments": {}})
    assert r.status_code == 200, r.get_data(as_text=True)
    msgs = sse_messages(r)
    assert [m["params"]["data"] for m in msgs if m.get("method") == "notifications/message"] == ["a warning line"]
    assert msgs[-1]["result"]["content"][0]["text"] == "said"
    # the capabilities came along: a client with URL elicitation gets -32042
    r = second.call("tools/call", {"name": "mine__echo", "arguments": {"text": "x"}})
    assert r.status_code == 200 and "error" in r.json and r.json["error"]["code"] == -32042, r.json
    # the key and the path: another key or another path is not this session
    _, other_key = add_key(app, {beta: None}, name="other")
    stranger = Rpc(other_worker.test_client(), other_key)
    stranger.session = first.session
    assert stranger.call("tools/list").status_code == 404
    elsewhere = Rpc(other_worker.test_client(), key, "/mcp/beta")
    elsewhere.session = first.session
    assert elsewhere.call("tools/list").status_code == 404
    # a session ended by the first worker is ended for the other one too
    ended = Rpc(client, key)
    ended.initialize()
    assert ended.raw(None, method="DELETE").status_code == 204
    late = Rpc(other_worker.test_client(), key)
    late.session = ended.session
    r = late.call("tools/list")
    assert r.status_code == 404 and r.json["error"]["code"] == -32001


def test_other_methods_are_not_offered_and_origins_are_checked(rpc):
    r = rpc.raw(None, method="PUT")  # GET opens the stream (tests/mcp/test_mcp_streams.py)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, POST, DELETE"
    for origin in ("http://evil.example.com", "null", "https://127.0.0.1.evil.com"):
        assert rpc.call("ping", extra={"Origin": origin}).status_code == 403, origin
    for origin in ("http://localhost:3000", "http://127.0.0.1", "http://[::1]:8080", "http://127.0.0.1:8080"):
        assert rpc.call("ping", extra={"Origin": origin}).status_code == 200, origin


def test_callers_without_a_usable_key_get_401(app, client, alpha):
    key_id, key = add_key(app, {alpha: None})
    for headers in ({}, {"Authorization": "Bearer vk_nope"}, {"Authorization": "Basic abc"},
                    {"X-Virtual-Key": "vk_unknown"}, {"Authorization": "Bearer " + key[:-1] + "x"}):
        r = client.post("/mcp", data=json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
                        headers={"Accept": ACCEPT, **headers})
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json["id"] == 3 and r.json["error"]["message"].startswith("unauthorized")
    ok = Rpc(client, None)
    ok.key = None
    r = client.post("/mcp", data=json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
                    headers={"Accept": ACCEPT, "X-Virtual-Key": key})
    assert r.status_code == 200
    with app.app_context():
        db.session.get(VirtualKey, key_id).expires_at = utcnow() + timedelta(seconds=1)
        db.session.commit()
        db.session.get(VirtualKey, key_id).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert Rpc(client, key).call("ping").status_code == 401  # expired
    with app.app_context():
        k = db.session.get(VirtualKey, key_id)
        k.expires_at, k.active = None, False
        db.session.commit()
    assert Rpc(client, key).call("ping").status_code == 401  # revoked


def test_anonymous_development_mode(app, client, alpha):
    with app.app_context():
        db.session.get(McpServer, alpha).allow_on_all_virtual_keys = True
        db.session.commit()
    app.config["PORTCULLIS_ENFORCE_AUTH"] = False
    try:
        anon = Rpc(client, None)
        anon.initialize()
        names = [t["name"] for t in anon.call("tools/list").json["result"]["tools"]]
        assert "alpha__echo" in names
        r = anon.call("tools/call", {"name": "alpha__echo", "arguments": {"text": "anon"}})
        assert r.json["result"]["content"][0]["text"] == "anon"
    finally:
        app.config["PORTCULLIS_ENFORCE_AUTH"] = True
    assert anon.call("ping").status_code == 401


def test_single_server_path_unknown_or_ungranted_is_404(app, client, alpha):
    _, key = add_key(app, {})
    assert Rpc(client, key, "/mcp/alpha").call("ping").status_code == 404
    assert Rpc(client, key, "/mcp/nosuch").call("ping").status_code == 404


def faulty_server(app, faulty, mode, **fields):
    url, _ = faulty
    return add_server(app, f"f-{mode}", f"{url}/{mode}/mcp", **fields)


@pytest.mark.parametrize("mode, text", [
    ("500", "f-500: the server answered HTTP 500"),
    ("garbage", "f-garbage: sent an answer that is not valid JSON"),
    ("deep", "f-deep: sent an answer nested too deeply"),
    ("html", "f-html: sent an answer of type 'text/html', not JSON or SSE"),
    ("drop", "f-drop: the connection dropped before the answer was complete"),
    ("slow", "f-slow: no answer within 0.5s"),
])
def test_upstream_faults_are_tool_errors_for_that_call_only(app, client, faulty, alpha, mode, text):
    sid = faulty_server(app, faulty, mode, read_timeout=0.5) if mode == "slow" else faulty_server(app, faulty, mode)
    _, key = add_key(app, {sid: None, alpha: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    r = rpc.call("tools/call", {"name": f"f-{mode}__x", "arguments": {}})
    assert r.status_code == 200
    result = r.json["result"]
    assert result["isError"] is True and result["content"][0]["text"] == text
    # Everything else keeps working.
    r = rpc.call("tools/call", {"name": "alpha__echo", "arguments": {"text": "still here"}})
    assert r.json["result"]["content"][0]["text"] == "still here"


def test_upstream_down(app, client):
    from tests.support.mcp import free_port

    with app.app_context():
        db.session.add(McpServer(name="gone", url=f"http://127.0.0.1:{free_port()}/mcp", auth_type="none",
                                 tools=[{"name": "x", "inputSchema": {"type": "object"}}], shared_headers={}))
        db.session.commit()
        sid = db.session.scalar(db.select(McpServer.id).where(McpServer.name == "gone"))
    _, key = add_key(app, {sid: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    r = rpc.call("tools/call", {"name": "gone__x", "arguments": {}})
    assert r.json["result"] == {"content": [{"type": "text", "text": "gone: the server is unreachable"}],
                                "isError": True}


def test_one_upstream_request_per_call_and_one_reinitialize_after_a_forgotten_session(app, client, faulty):
    url, module = faulty
    sid = faulty_server(app, faulty, "ok")
    _, key = add_key(app, {sid: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    module.SEEN.clear()
    for _ in range(5):
        assert rpc.call("tools/call", {"name": "f-ok__x", "arguments": {}}).json["result"]["content"][0]["text"] == "ok"
    assert [m for p, m, s in module.SEEN if p == "ok"] == ["tools/call"] * 5
    session_ids = {s for p, m, s in module.SEEN if p == "ok"}
    assert len(session_ids) == 1 and None not in session_ids  # the upstream session is reused
    module.LIVE_SESSIONS.clear()  # the upstream restarts and forgets its sessions
    module.SEEN.clear()
    assert rpc.call("tools/call", {"name": "f-ok__x", "arguments": {}}).json["result"]["content"][0]["text"] == "ok"
    assert [m for p, m, s in module.SEEN if p == "ok"] == [
        "tools/call", "initialize", "notifications/initialized", "tools/call"]


def sse_messages(r) -> list[dict]:
    assert r.mimetype == "text/event-stream"
    return [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data: ")]


def test_log_messages_are_relayed_at_or_above_the_session_level(app, client, upstreams):
    import warnings

    from tests.support.mcp import UPSTREAM_KEY

    beta = add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})
    _, key = add_key(app, {beta: None})
    rpc = Rpc(client, key)
    result = rpc.initialize()
    assert "logging" in result["capabilities"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = sse_messages(rpc.call("tools/call", {"name": "beta__chatty", "arguments": {}}))
        assert [m["params"]["data"] for m in msgs if m.get("method") == "notifications/message"] == [
            "an info line", "a warning line"]
        assert msgs[-1]["id"] == rpc._id and msgs[-1]["result"]["content"][0]["text"] == "said"
        assert rpc.call("logging/setLevel", {"level": "loud"}).json["error"]["code"] == -32602
        assert rpc.call("logging/setLevel", {"level": "warning"}).json == {"jsonrpc": "2.0", "id": rpc._id, "result": {}}
        msgs = sse_messages(rpc.call("tools/call", {"name": "beta__chatty", "arguments": {}}))
    assert [m["params"]["data"] for m in msgs if m.get("method") == "notifications/message"] == ["a warning line"]
    # A client that takes only JSON gets the answer alone.
    r = rpc.call("tools/call", {"name": "beta__chatty", "arguments": {}}, extra={"Accept": "application/json"})
    assert r.mimetype == "application/json" and r.json["result"]["content"][0]["text"] == "said"


def upstream_tool_names(rpc) -> list[str]:
    """tools/list without Portcullis's own tools (portcullis__*, see test_mcp_native.py)."""
    return [t["name"] for t in rpc.call("tools/list").json["result"]["tools"] if not t["name"].startswith("portcullis__")]


def test_tools_list_is_served_from_the_stored_list_and_refreshed_in_the_background(app, client, faulty):
    url, module = faulty
    sid = faulty_server(app, faulty, "ok")
    _, key = add_key(app, {sid: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    module.SEEN.clear()
    for _ in range(3):
        assert upstream_tool_names(rpc) == ["f-ok__x"]
    assert [m for p, m, s in module.SEEN if p == "ok"] == []  # no fan-out on the hot path
    # Once the stored list is older than PORTCULLIS_TOOLS_REFRESH_SECONDS, listing refreshes it
    # in the background (the answer does not wait for it).
    with app.app_context():
        server = db.session.get(McpServer, sid)
        server.tools_refreshed_at = utcnow() - timedelta(hours=2)
        db.session.commit()
    module.TOOLS.append({"name": "y", "description": "new", "inputSchema": {"type": "object"}})
    try:
        assert upstream_tool_names(rpc) == ["f-ok__x"]
        wait_for(lambda: upstream_tool_names(rpc) == ["f-ok__x", "f-ok__y"], "the background refresh")
        assert [m for p, m, s in module.SEEN if p == "ok"].count("tools/list") == 1
    finally:
        module.TOOLS.pop()


def test_oversized_body_is_refused(rpc):
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * (2 * 1024 * 1024)}})
    r = rpc.raw(big)
    assert r.status_code == 413 and r.json["error"]["code"] == -32600
