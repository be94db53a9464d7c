"""/mcp with the real `mcp` SDK client against real upstream servers (the SDK's MCPServer)."""
from __future__ import annotations

import pytest
from mcp import MCPError
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.support.mcp import UPSTREAM_KEY, add_key, add_server, client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def two_servers(app, upstreams):
    alpha = add_server(app, "alpha", upstreams["alpha"])
    beta = add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})
    return alpha, beta


async def open_client(url, key, **kw):
    http, c = client(url, key, **kw)
    return http, c


async def test_lists_and_calls_tools_of_every_granted_server(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None, beta: None})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        assert c.protocol_version == "2025-11-25"  # legacy mode: initialize (auto: test_mcp_2026.py)
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert {"alpha__echo", "alpha__weather", "beta__echo", "beta__headers"} <= set(tools)
        assert tools["alpha__echo"].description == "Echo the text back."
        assert tools["alpha__weather"].output_schema["properties"]["temp_c"]["type"] == "number"

        r = await c.call_tool("alpha__echo", {"text": "hi"})
        assert r.content[0].text == "hi" and r.structured_content == {"result": "hi"} and not r.is_error
        # The shared header reaches the upstream that needs it (and only that one).
        r = await c.call_tool("beta__headers", {})
        assert r.structured_content["x-api-key"] == UPSTREAM_KEY
        r = await c.call_tool("alpha__headers", {})
        assert "x-api-key" not in r.structured_content


async def test_results_pass_through_faithfully(app, live_server, two_servers):
    alpha, _ = two_servers
    _, key = add_key(app, {alpha: None})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        assert (await c.call_tool("alpha__pixel", {})).content[0].mime_type == "image/png"
        media = (await c.call_tool("alpha__media", {})).content
        assert [m.type for m in media] == ["audio", "resource_link", "resource"]
        assert media[1].uri == "test://doc/1" and media[2].resource.text == "embedded text"
        r = await c.call_tool("alpha__weather", {"city": "Oslo"})
        assert r.structured_content == {"city": "Oslo", "temp_c": 21.5}
        assert (await c.call_tool("alpha__with_meta", {})).meta["trace"] == "abc"
        r = await c.call_tool("alpha__fail", {})
        assert r.is_error and r.content[0].text == "Error executing tool fail: bad input"
        with pytest.raises(MCPError) as e:
            await c.call_tool("alpha__needs_auth", {})
        assert e.value.code == -32042 and e.value.data["elicitations"][0]["elicitationId"] == "e1"


async def test_progress_is_relayed_from_an_sse_upstream(app, live_server, two_servers, tmp_path):
    _, beta = two_servers
    _, key = add_key(app, {beta: None})
    seen, gated, opened = [], [], tmp_path / "opened"

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async def open_the_gate(progress, total, message):
        gated.append((progress, total, message))
        if progress == 1:
            opened.touch()  # the upstream tool waits for this: it finishes only if progress 1 got here first

    http, c = client(live_server + "/mcp", key)
    async with http, c:
        r = await c.call_tool("beta__slow", {"steps": 3}, progress_callback=on_progress)
        assert r.content[0].text == "done"
        assert seen == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]
        # relayed as they happen, not buffered until the end
        r = await c.call_tool("beta__gate", {"path": str(opened)}, progress_callback=open_the_gate)
    assert r.content[0].text == "opened"
    assert gated == [(1.0, 2.0, "waiting"), (2.0, 2.0, "opened")]


async def test_grants_tool_allowlists_and_disabled_servers(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: ["echo", "add"]})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        names = {t.name for t in (await c.list_tools()).tools} - {"portcullis__list_services", "portcullis__request_key"}
        assert names == {"alpha__echo", "alpha__add"}  # beta not granted, other alpha tools filtered
        assert (await c.call_tool("alpha__add", {"a": 2, "b": 3})).content[0].text == "5"
        errors = []
        for name in ("alpha__pixel", "beta__echo", "nosuch__echo", "echo"):
            with pytest.raises(MCPError) as e:
                await c.call_tool(name, {"text": "x"})
            errors.append((e.value.code, e.value.message.replace(name, "NAME")))
        assert len(set(errors)) == 1 and errors[0][0] == -32602  # filtered == ungranted == unknown

    # allow_on_all servers join every key; a disabled server disappears.
    from app.extensions import db
    from app.models import McpServer

    with app.app_context():
        db.session.get(McpServer, beta).allow_on_all_virtual_keys = True
        db.session.get(McpServer, alpha).enabled = False
        db.session.commit()
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "beta__echo" in names and not any(n.startswith("alpha__") for n in names)
        with pytest.raises(MCPError) as e:
            await c.call_tool("alpha__echo", {"text": "x"})
        assert e.value.code == -32602  # a disabled server's tool is an unknown tool


async def test_single_server_endpoint_uses_plain_tool_names(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None})
    http, c = client(live_server + "/mcp/alpha", key)
    async with http, c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo" in names and not any("__" in n for n in names)
        assert (await c.call_tool("echo", {"text": "plain"})).content[0].text == "plain"
    http, c = client(live_server + "/mcp/beta", key)  # not granted: same as nonexistent
    with pytest.raises(BaseExceptionGroup) as e:  # the SDK's task groups wrap the refusal
        async with http, c:
            pass
    refusal = e.value
    while isinstance(refusal, BaseExceptionGroup):
        (refusal,) = refusal.exceptions
    assert isinstance(refusal, MCPError) and (refusal.code, refusal.message) == (-32600, "no such MCP server")
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http:
        for path in ("/mcp/beta", "/mcp/nosuch"):
            r = await http.post(live_server + path, headers={"Accept": "application/json, text/event-stream"}, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            assert r.status_code == 404 and r.json()["error"] == {"code": -32600, "message": "no such MCP server"}
