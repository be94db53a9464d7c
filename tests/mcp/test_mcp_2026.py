"""MCP 2026-07-28 through /mcp, with the real `mcp` SDK client (auto mode: server/discover, then
stateless requests; legacy mode: initialize) and real SDK upstreams: ones that speak 2026-07-28
(the SDK's MCPServer) and one of the initialize era only (``--legacy-only``). Towards each
upstream Portcullis speaks what server/discover found; elicitation travels as inputRequests
(2026-07-28) or as relayed elicitation/create (sessions), never mixed up."""
from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.types import ElicitRequestURLParams, ElicitResult, PromptReference

from tests.support.mcp import UPSTREAM_KEY, Rpc, add_key, add_server, client

pytestmark = pytest.mark.anyio
V = "2026-07-28"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def servers(app, upstreams, legacy_url):
    return {"alpha": add_server(app, "alpha", upstreams["alpha"]),
            "beta": add_server(app, "beta", upstreams["beta"], auth_type="headers",
                               headers={"X-Api-Key": UPSTREAM_KEY}),
            "old": add_server(app, "old", legacy_url)}


async def on_elicit(ctx, params):
    if isinstance(params, ElicitRequestURLParams):
        return ElicitResult(action="accept")
    return ElicitResult(action="accept", content={"answer": "Ada"})


def _peer(app, server_id):
    with app.app_context():
        from app.snapshot import current

        return app.extensions["mcp_client"].peer(current().servers[server_id].shared_endpoint).modern


async def test_a_2026_client_uses_everything_and_upstreams_are_spoken_to_in_their_own_era(app, live_server, servers):
    _, key = add_key(app, {sid: None for sid in servers.values()})
    assert [_peer(app, servers[n]) for n in ("alpha", "beta", "old")] == [V, V, None]  # found at discovery
    http, c = client(live_server + "/mcp", key, mode="auto", elicitation_callback=on_elicit)
    async with http, c:
        assert c.protocol_version == V  # server/discover answered: no initialize, no session
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"alpha__echo", "beta__echo", "old__echo", "portcullis__list_services"} <= names
        # the upstreams that speak 2026-07-28 get it, the legacy one its session
        assert (await c.call_tool("alpha__era", {})).content[0].text == V
        assert (await c.call_tool("beta__era", {})).content[0].text == V
        assert (await c.call_tool("old__era", {})).content[0].text == "2025-11-25"
        r = await c.call_tool("beta__weather", {"city": "Oslo"})
        assert r.structured_content == {"city": "Oslo", "temp_c": 21.5} and not r.is_error
        assert (await c.call_tool("old__echo", {"text": "hi"})).content[0].text == "hi"
        assert (await c.call_tool("portcullis__list_services", {})).content
        # progress of both kinds of upstream reaches the agent during the call
        for server in ("beta", "old"):
            seen = []

            async def on_progress(progress, total, message):
                seen.append((progress, total, message))
            await c.call_tool(f"{server}__slow", {"steps": 2}, progress_callback=on_progress)
            assert seen == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")], server
        # inputRequests from a 2026-07-28 upstream reach the agent, its answer goes back on the retry
        assert (await c.call_tool("beta__resolve_ask", {})).content[0].text == "resolved:Ada"
        assert (await c.call_tool("alpha__resolve_ask", {})).content[0].text == "resolved:Ada"
        # a legacy upstream's elicitation/create reaches a 2026-07-28 agent as inputRequests
        # (the upstream call parked meanwhile: app/mcp/parked.py, tests/mcp/test_mcp_parked.py)
        assert (await c.call_tool("old__ask", {})).content[0].text == "accept:Ada"
        # resources, prompts, completion, through both kinds of upstream
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert {"portcullis://beta/test://static/text", "portcullis://old/test://static/text"} <= uris
        for server in ("beta", "old"):
            read = await c.read_resource(f"portcullis://{server}/test://static/text")
            assert read.contents[0].text and str(read.contents[0].uri).startswith(f"portcullis://{server}/")
            prompt = await c.get_prompt(f"{server}__greet", {"who": "Ada"})
            assert "Ada" in prompt.messages[0].content.text
        assert (await c.list_prompts()).prompts
        for server in ("beta", "old"):
            done = await c.complete(PromptReference(type="ref/prompt", name=f"{server}__greet"),
                                    {"name": "who", "value": "A"})
            assert done.completion.values == [f"{server}:prompt:A"]


async def test_older_clients_keep_their_sessions(app, live_server, servers):
    _, key = add_key(app, {sid: None for sid in servers.values()})
    http, c = client(live_server + "/mcp", key, mode="legacy", elicitation_callback=on_elicit)
    async with http, c:
        assert c.protocol_version == "2025-11-25"
        # a legacy agent's calls keep using upstream sessions (relayed requests, log levels)
        assert (await c.call_tool("beta__era", {})).content[0].text == "2025-11-25"
        assert (await c.call_tool("beta__ask", {})).content[0].text == "accept:Ada"
        assert (await c.call_tool("beta__resolve_ask", {})).content[0].text == "resolved:Ada"
        assert (await c.call_tool("old__ask", {})).content[0].text == "accept:Ada"


async def test_a_single_server_path_speaks_2026_too(app, live_server, servers):
    _, key = add_key(app, {servers["beta"]: None})
    http, c = client(live_server + "/mcp/beta", key, mode="auto", elicitation_callback=on_elicit)
    async with http, c:
        assert c.protocol_version == V
        assert (await c.call_tool("echo", {"text": "x"})).content[0].text == "x"
        assert (await c.read_resource("test://static/text")).contents[0].text
        assert (await c.call_tool("resolve_ask", {})).content[0].text == "resolved:Ada"


def _modern(rpc, method, params=None, headers=None, version=V, caps=None):
    meta = {"io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": caps or {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**(params or {}), "_meta": meta}}
    h = {"MCP-Protocol-Version": version, "Mcp-Method": method}
    if method == "tools/call":
        h["Mcp-Name"] = (params or {}).get("name", "")
    h.update(headers or {})
    return rpc.raw(body, h)


def test_discover_and_the_envelope_checks(app, client, servers):
    _, key = add_key(app, {servers["beta"]: None})
    rpc = Rpc(client, key)
    r = _modern(rpc, "server/discover")
    assert r.status_code == 200 and "Mcp-Session-Id" not in r.headers
    result = r.json["result"]
    assert result["supportedVersions"][0] == V and "2025-11-25" in result["supportedVersions"]
    assert result["resultType"] == "complete" and result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "portcullis"
    # change notifications ride subscriptions/listen (app/mcp/listen.py); beta (an SDK server of
    # 2026-07-28) announced it sends them
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert result["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
    listed = _modern(rpc, "tools/list").json["result"]
    assert "beta__echo" in {t["name"] for t in listed["tools"]} and listed["resultType"] == "complete"
    called = _modern(rpc, "tools/call", {"name": "beta__echo", "arguments": {"text": "a"}}).json["result"]
    assert called["content"][0]["text"] == "a" and called["resultType"] == "complete"
    assert "ttlMs" not in called and called["_meta"]["io.modelcontextprotocol/serverInfo"]["version"] == "1.0"
    # the ladder: envelope, headers, version; methods the revision dropped
    bad = rpc.raw({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                  {"MCP-Protocol-Version": V, "Mcp-Method": "tools/list"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == -32602
    assert _modern(rpc, "tools/list", headers={"Mcp-Method": "tools/call"}).json["error"]["code"] == -32020
    assert _modern(rpc, "tools/call", {"name": "beta__echo", "arguments": {"text": "a"}},
                   headers={"Mcp-Name": "beta__other"}).json["error"]["code"] == -32020
    r = _modern(rpc, "tools/list", version="2099-01-01")
    assert r.status_code == 400 and r.json["error"]["code"] == -32022
    assert r.json["error"]["data"] == {"supported": [V, "2025-11-25", "2025-06-18", "2025-03-26"],
                                       "requested": "2099-01-01"}
    for dropped in ("ping", "logging/setLevel", "resources/subscribe", "initialize"):
        r = _modern(rpc, dropped)
        assert (r.status_code, r.json["error"]["code"]) == (404, -32601), dropped
    note = rpc.raw({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}},
                   {"MCP-Protocol-Version": V})
    assert note.status_code == 202
    # initialize stays initialize, whatever its _meta says
    init = rpc.raw({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": V}}})
    assert init.status_code == 200 and init.headers["Mcp-Session-Id"]
    # a key that is not granted a server sees nothing of it
    assert "old__echo" not in {t["name"] for t in listed["tools"]}
    r = _modern(rpc, "tools/call", {"name": "old__echo", "arguments": {"text": "a"}})
    assert r.json["error"]["code"] == -32602


def test_log_messages_only_when_the_request_asks(app, client, servers):
    _, key = add_key(app, {servers["old"]: None})
    rpc = Rpc(client, key)
    for level, expected in ((None, []), ("warning", ["warning"])):
        meta = {"io.modelcontextprotocol/logLevel": level} if level else {}
        body = {"name": "old__chatty", "arguments": {}}
        r = rpc.raw({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {**body, "_meta": {
            "io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}, **meta}}},
            {"MCP-Protocol-Version": V, "Mcp-Method": "tools/call", "Mcp-Name": "old__chatty",
             "Accept": "text/event-stream"})
        events = [json.loads(line[5:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data:")]
        levels = [e["params"]["level"] for e in events if e.get("method") == "notifications/message"]
        assert levels == expected and events[-1]["result"]["resultType"] == "complete"
