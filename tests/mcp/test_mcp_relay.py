"""Server-to-client requests relayed during a call (sampling, elicitation in form and URL mode,
roots), with the real `mcp` SDK client against a real stateful upstream (the SDK's MCPServer):
the upstream's request reaches the agent's session, the agent's answer reaches the upstream;
an agent without the capability gets the upstream's request refused, never a hang."""
from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from mcp import MCPError
from mcp.types import CreateMessageResult, ElicitRequestURLParams, ElicitResult, ListRootsResult, Root, TextContent

from app.mcp.relay import PREFIX
from tests.support.mcp import UPSTREAM_KEY, Rpc, add_key, add_server, client, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def beta(app, upstreams):
    return add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})


async def on_sample(ctx, params):
    return CreateMessageResult(role="assistant", model="agent-llm",
                               content=TextContent(type="text", text="echo " + params.messages[0].content.text))


async def on_elicit(ctx, params):
    if isinstance(params, ElicitRequestURLParams):
        return ElicitResult(action="accept" if params.url == "http://127.0.0.1/x" else "decline")
    return ElicitResult(action="accept", content={"answer": "Ada"})


async def on_roots(ctx):
    return ListRootsResult(roots=[Root(uri="file:///work/project", name="project")])


@pytest.mark.parametrize("path,prefix", [("/mcp", "beta__"), ("/mcp/beta", "")])
async def test_requests_reach_the_agent_and_answers_the_upstream(app, live_server, beta, path, prefix):
    _, key = add_key(app, {beta: None})
    http, c = client(live_server + path, key, sampling_callback=on_sample, elicitation_callback=on_elicit,
                     list_roots_callback=on_roots)
    async with http, c:
        r = await c.call_tool(prefix + "sample", {"prompt": "hello"})
        assert r.content[0].text == "agent-llm:echo hello" and not r.is_error
        assert (await c.call_tool(prefix + "ask", {})).content[0].text == "accept:Ada"
        assert (await c.call_tool(prefix + "ask_url", {})).content[0].text == "accept"
        assert (await c.call_tool(prefix + "roots", {})).structured_content == {"result": ["file:///work/project"]}


async def test_an_agent_without_the_capability_is_never_asked(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    http, c = client(live_server + "/mcp", key)  # no callbacks: no sampling, elicitation or roots
    async with http, c:
        for tool, need in (("sample", "sampling"), ("ask", "elicitation (form mode)"),
                           ("ask_url", "elicitation (url mode)"), ("roots", "roots")):
            # the upstream's request is refused at once (-32601 naming the capability), the
            # upstream's tool fails with that error, and the call ends
            with pytest.raises(MCPError) as e:
                await c.call_tool("beta__" + tool, {"prompt": "x"} if tool == "sample" else {})
            assert e.value.message == f"the agent did not declare the {need} capability", tool
    # elicitation declared, sampling not: each capability on its own
    http, c = client(live_server + "/mcp", key, elicitation_callback=on_elicit)
    async with http, c:
        assert (await c.call_tool("beta__ask", {})).content[0].text == "accept:Ada"
        assert (await c.call_tool("beta__ask_url", {})).content[0].text == "accept"
        with pytest.raises(MCPError, match="sampling capability"):
            await c.call_tool("beta__sample", {"prompt": "x"})


def test_answers_are_bound_to_the_agent_session(app, client, beta):
    """A relayed request's id is an authenticated token naming the agent session: another
    session (or a forged id) cannot answer it, and bad answers change nothing."""
    _, key = add_key(app, {beta: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    for bad in (PREFIX + "garbage", PREFIX, PREFIX + "x" * 5000):
        assert rpc.raw({"jsonrpc": "2.0", "id": bad, "result": {}}).status_code == 202
    other = Rpc(client, key)
    assert other.raw({"jsonrpc": "2.0", "id": PREFIX + "x", "result": {}}).status_code == 400  # no session


def _sse(lines):
    data = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def test_the_agents_cancellation_reaches_the_upstream(app, live_server, beta, tmp_path):
    """notifications/cancelled for a call in flight is forwarded under the upstream's request
    id: the upstream stops the tool (which would otherwise wait 15 s) and the call ends."""
    _, key = add_key(app, {beta: None})
    url, headers = live_server + "/mcp", {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    r = httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call", "params": {
        "name": "beta__gate", "arguments": {"path": str(tmp_path / "never"), "timeout": 15},
        "_meta": {"progressToken": "p"}}}
    started = time.monotonic()
    with httpx.stream("POST", url, headers=headers, json=call, timeout=30) as stream:
        events = _sse(stream.iter_lines())
        assert next(events)["params"]["message"] == "waiting"  # the tool runs upstream
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "call-7"}}
        assert httpx.post(url, headers=headers, json=cancel, timeout=10).status_code == 202
        rest = list(events)
    assert time.monotonic() - started < 10  # not the tool's 15 s
    assert not any(e.get("result", {}).get("content", [{}])[0].get("text") in ("opened", "timed out") for e in rest)


def test_list_changed_is_relayed_during_a_call(app, client, beta):
    """The upstream's list_changed notifications reach the agent on the call's stream (a
    tools/list_changed also refreshes the stored tool list, in the background)."""
    _, key = add_key(app, {beta: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    r = rpc.call("tools/call", {"name": "beta__change", "arguments": {}}, {"Accept": "text/event-stream"})
    events = list(_sse(r.get_data(as_text=True).splitlines()))
    assert [e.get("method") for e in events[:-1]] == ["notifications/tools/list_changed",
                                                      "notifications/prompts/list_changed"]
    assert events[-1]["result"]["content"][0]["text"] == "changed"


def test_the_agents_progress_on_a_relayed_request_reaches_the_upstream(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    url, headers = live_server + "/mcp", {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    r = httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}}})
    headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "beta__sample_progress", "arguments": {}}}
    with httpx.stream("POST", url, headers=headers, json=call, timeout=20) as stream:
        events = _sse(stream.iter_lines())
        asked = next(events)
        token = asked["params"]["_meta"]["progressToken"]
        assert asked["method"] == "sampling/createMessage" and token.startswith(PREFIX)
        for step in (1, 2):
            httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "method": "notifications/progress",
                       "params": {"progressToken": token, "progress": step, "total": 2, "message": f"s{step}"}})
        # a forged token changes nothing
        httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": PREFIX + "forged", "progress": 9, "total": 9}})
        answer = {"jsonrpc": "2.0", "id": asked["id"], "result": {
            "role": "assistant", "model": "m", "content": {"type": "text", "text": "ok"}}}
        assert httpx.post(url, headers=headers, json=answer, timeout=10).status_code == 202
        final = next(events)
    assert final["result"]["structuredContent"]["result"] == ["1/2 s1", "2/2 s2"]


def test_resource_updates_during_a_call_reach_the_agent(app, client, beta):
    _, key = add_key(app, {beta: None})
    for path, uri in (("/mcp", "portcullis://beta/test://static/text"), ("/mcp/beta", "test://static/text")):
        rpc = Rpc(client, key, path)
        rpc.initialize()
        assert rpc.call("resources/subscribe", {"uri": uri}).json["result"] == {}
        name = "beta__touch" if path == "/mcp" else "touch"
        r = rpc.call("tools/call", {"name": name, "arguments": {"uri": "test://static/text"}},
                     {"Accept": "text/event-stream"})
        events = list(_sse(r.get_data(as_text=True).splitlines()))
        assert events[0] == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
        assert events[-1]["result"]["content"][0]["text"] == "touched"


async def test_an_elicitation_answered_after_the_read_timeout_still_completes(app, live_server, upstreams,
                                                                              monkeypatch):
    """A call from an agent session that answers server-to-client requests waits
    PORTCULLIS_MCP_RELAY_WAIT_SECONDS for the upstream, not the server's read_timeout: the
    upstream waits for a person. Without that, the same late answer loses the call."""
    sid = add_server(app, "slowpoke", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY},
                     read_timeout=1.0)
    _, key = add_key(app, {sid: None})

    async def late(ctx, params):
        await anyio.sleep(2.0)  # the person takes longer than the read timeout
        return ElicitResult(action="accept", content={"answer": "Late"})

    http, c = client(live_server + "/mcp", key, elicitation_callback=late)
    async with http, c:
        assert (await c.call_tool("slowpoke__ask", {})).content[0].text == "accept:Late"
        monkeypatch.setitem(app.config, "PORTCULLIS_MCP_RELAY_WAIT_SECONDS", 0.5)  # shorter: read_timeout rules
        r = await c.call_tool("slowpoke__ask", {})
        assert r.is_error and r.content[0].text == "slowpoke: no answer within 1s"


def test_a_cancellation_for_a_call_of_another_process_goes_on_the_bus_by_hashes_only(monkeypatch):
    """What the bus carries names the call by hashes of the agent session id and the request
    id, nothing else; the process holding the call forwards it (two real instances:
    test_mcp_relay_instances.py)."""
    from app import cluster
    from app.mcp.relay import Calls

    sent, forwarded = [], []

    class Bus:
        def publish(self, payload):
            sent.append(payload)

    class Call:
        want_id, ep, session = 41, type("Ep", (), {"name": "up"})(), None

        class client:
            @staticmethod
            def _post_message(ep, session, message):
                forwarded.append(message)

    monkeypatch.setattr(cluster, "_bus", [Bus()])
    session_id = "5e" * 32
    here, there = Calls(), Calls()
    monkeypatch.setattr(cluster, "_handlers", {"cancel": there.cancel_announced})
    there.add(session_id, "call-secret", Call())
    here.cancel(session_id, {"requestId": "call-secret", "reason": "user pressed stop"})
    assert len(sent) == 1 and session_id not in sent[0] and "secret" not in sent[0] and "stop" not in sent[0]
    assert sent[0].split(":", 2)[1] == "cancel"
    cluster.received(sent[0])
    wait_for(lambda: forwarded, "the forwarded cancellation", timeout=5)
    assert forwarded == [{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41}}]
    cluster.received(sent[0].replace("cancel:", "cancel:x"))  # a malformed name: nothing
    here.cancel(session_id, {"requestId": "other"})  # a call nobody holds: announced, no effect
    cluster.received(sent[-1])
    assert len(forwarded) == 1
