"""subscriptions/listen (MCP 2026-07-28) through the gateway (app/mcp/listen.py), with the real
SDK client in auto mode (``Client.listen``) over real HTTP, against a real SDK upstream of
2026-07-28 (alpha: Portcullis listens to it) and one of the initialize era (old: Portcullis
holds a session of the listen's own, subscribed, and its GET stream): resource updates and
list_changed arrive on the agent's stream stamped with its subscription id (the SDK client
routes frames by that stamp only); a key whose grants exclude a server hears nothing of it and
Portcullis does not even subscribe there; the stream budget applies; when the agent hangs up,
the upstream listen ends and the upstream session is unsubscribed."""
from __future__ import annotations

import json
import threading
import time

import anyio
import httpx
import pytest
from mcp import MCPError
from mcp.client.subscriptions import PromptsListChanged, ResourceUpdated

from app.extensions import db
from tests.support.mcp import add_key, add_server, client

pytestmark = pytest.mark.anyio
V = "2026-07-28"
SUB = "io.modelcontextprotocol/subscriptionId"
A = "portcullis://alpha/test://static/text"
O = "portcullis://old/test://static/text"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def servers(app, upstreams, legacy_url):
    return {"alpha": add_server(app, "alpha", upstreams["alpha"]), "old": add_server(app, "old", legacy_url)}


@pytest.fixture
def quick(app, monkeypatch):
    """Keep-alives (and so the notice of a vanished agent) every 0.3 s."""
    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 0.3)


async def _hear(sub, trigger, wanted, timeout: float = 20.0) -> list:
    """Events of ``sub`` while ``trigger`` runs once a second (the upstream listens start after
    the acknowledgement), until every event in ``wanted`` came."""
    seen: list = []
    with anyio.fail_after(timeout):
        while not all(w in seen for w in wanted):
            await trigger()
            with anyio.move_on_after(1.0):
                while True:
                    seen.append(await sub.__anext__())
    return seen


def _number(result) -> int:
    return int(result.content[0].text)


async def test_updates_and_list_changes_of_both_eras_arrive_stamped(app, live_server, servers, quick):
    _, key = add_key(app, {servers["alpha"]: None, servers["old"]: None})
    http, c = client(live_server + "/mcp", key, mode="auto")
    async with http, c:
        assert c.protocol_version == V
        async with c.listen(prompts_list_changed=True,
                            resource_subscriptions=[A, O, "portcullis://nope/test://x", "test://static/text"]) as sub:
            # honored: the flags, and the URIs of granted servers only
            assert sub.honored.prompts_list_changed is True
            assert sub.honored.resource_subscriptions == [A, O]

            async def trigger():
                await c.call_tool("alpha__broadcast", {"uri": "test://static/text"})
                await c.call_tool("old__broadcast", {"uri": "test://static/text"})
            seen = await _hear(sub, trigger, [ResourceUpdated(A), ResourceUpdated(O), PromptsListChanged()])
            assert set(seen) <= {ResourceUpdated(A), ResourceUpdated(O), PromptsListChanged()}
            # the initialize-era upstream has one subscribed session: the listen's own
            assert _number(await c.call_tool("old__broadcast", {"uri": "test://static/text"})) == 1
            assert _number(await c.call_tool("alpha__listeners", {})) == 1
        # the agent hung up: its upstream listen ends, its upstream session is unsubscribed
        with anyio.fail_after(15):
            while (now := (_number(await c.call_tool("alpha__listeners", {})),
                           _number(await c.call_tool("old__broadcast", {"uri": "test://static/text"})))) != (0, 0):
                await anyio.sleep(0.5)


async def test_a_key_without_a_server_hears_nothing_of_it(app, live_server, servers, quick):
    """Either way round: Portcullis neither listens nor subscribes at an ungranted upstream."""
    _, only_alpha = add_key(app, {servers["alpha"]: None})
    _, only_old = add_key(app, {servers["old"]: None}, name="other")
    http, c = client(live_server + "/mcp", only_alpha, mode="auto")
    http2, c2 = client(live_server + "/mcp", only_old, mode="auto")
    async with http, c, http2, c2:
        async with c.listen(prompts_list_changed=True, resource_subscriptions=[A, O]) as sub:
            assert sub.honored.resource_subscriptions == [A]

            async def trigger():
                assert _number(await c2.call_tool("old__broadcast", {"uri": "test://static/text"})) == 0
                await c.call_tool("alpha__broadcast", {"uri": "test://static/text"})
            seen = await _hear(sub, trigger, [ResourceUpdated(A), PromptsListChanged()])
            assert ResourceUpdated(O) not in seen
        async with c2.listen(prompts_list_changed=True, resource_subscriptions=[A, O]) as sub:
            assert sub.honored.resource_subscriptions == [O]

            async def trigger():
                await c.call_tool("alpha__broadcast", {"uri": "test://static/text"})
                await c2.call_tool("old__broadcast", {"uri": "test://static/text"})
            seen = await _hear(sub, trigger, [ResourceUpdated(O), PromptsListChanged()])
            assert ResourceUpdated(A) not in seen
            # no listen at alpha for this key (the first one's has ended by now)
            with anyio.fail_after(10):
                while _number(await c.call_tool("alpha__listeners", {})):
                    await anyio.sleep(0.1)
            seen = await _hear(sub, trigger, [ResourceUpdated(O)])
            assert ResourceUpdated(A) not in seen and _number(await c.call_tool("alpha__listeners", {})) == 0


async def test_a_single_server_path_keeps_the_upstream_uris(app, live_server, servers, quick):
    _, key = add_key(app, {servers["old"]: None})
    http, c = client(live_server + "/mcp/old", key, mode="auto")
    async with http, c:
        assert c.protocol_version == V
        async with c.listen(resource_subscriptions=["test://static/text"]) as sub:
            assert sub.honored.resource_subscriptions == ["test://static/text"]

            async def trigger():
                await c.call_tool("broadcast", {"uri": "test://static/text"})
            seen = await _hear(sub, trigger, [ResourceUpdated("test://static/text")])
            assert PromptsListChanged() not in seen  # not asked: never sent


async def test_listens_count_against_the_stream_budget(app, live_server, servers, quick, monkeypatch):
    from app.mcp.streams import Budget

    monkeypatch.setitem(app.extensions, "mcp_streams", Budget(total=2, per_caller=1))
    _, key = add_key(app, {servers["alpha"]: None})
    _, other_key = add_key(app, {servers["alpha"]: None})
    _, third_key = add_key(app, {servers["alpha"]: None})
    http, c = client(live_server + "/mcp", key, mode="auto")
    other_http, other = client(live_server + "/mcp", other_key, mode="auto")
    third_http, third = client(live_server + "/mcp", third_key, mode="auto")
    async with http, c, other_http, other, third_http, third:
        async with c.listen(tools_list_changed=True):
            with pytest.raises(MCPError, match="too many open streams for this caller"):
                async with c.listen(tools_list_changed=True):  # the caller's own share is spent
                    pass
            async with other.listen(tools_list_changed=True):  # another caller still gets one
                with pytest.raises(MCPError, match="Subscription limit"):  # now the worker's are spent
                    async with third.listen(tools_list_changed=True):
                        pass
        with anyio.fail_after(10):  # given back once the gateway noticed the hang-up
            while True:
                try:
                    async with c.listen(tools_list_changed=True) as sub:
                        assert sub.honored.tools_list_changed is True
                    break
                except MCPError:
                    await anyio.sleep(0.1)


def _listen(live_server, key, notifications, path="/mcp", accept="application/json, text/event-stream"):
    meta = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": "l-1", "method": "subscriptions/listen",
            "params": {"notifications": notifications, "_meta": meta}}
    headers = {"Authorization": f"Bearer {key}", "Accept": accept, "Content-Type": "application/json",
               "MCP-Protocol-Version": V, "Mcp-Method": "subscriptions/listen"}
    return httpx.stream("POST", live_server + path, json=body, headers=headers, timeout=10)


def _frames(resp, seconds: float = 10.0):
    """The data frames, until ``seconds`` have passed (keep-alives come every 0.3 s)."""
    deadline = time.monotonic() + seconds
    for line in resp.iter_lines():
        if time.monotonic() > deadline:
            return
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_the_acknowledgement_and_portcullis_own_tool_list_changes(app, live_server, servers, quick):
    """Raw frames: the acknowledgement as the SDK server writes it (honored subset only:
    extension keys and URIs of no granted server left out); then a change of the key's grants
    is Portcullis's own tools/list_changed, stamped."""
    from app.models import VirtualKey
    from app.ops.keys import update_key

    key_id, key = add_key(app, {servers["alpha"]: None})
    with _listen(live_server, key, {}, accept="application/json") as r:
        assert r.status_code == 406  # the answer is a stream
    for bad in ("all", {"resourceSubscriptions": "test://x"}, None):
        with _listen(live_server, key, bad) as r:
            r.read()
            assert (r.status_code, r.json()["error"]["code"]) == (400, -32602), bad
    with _listen(live_server, key, {"toolsListChanged": True, "resourceSubscriptions": [A, O], "taskIds": ["t"]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = _frames(r)
        assert next(frames) == {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": {
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": [A]}, "_meta": {SUB: "l-1"}}}
        with app.app_context():
            update_key(db.session.get(VirtualKey, key_id), {"mcp_servers": [
                {"server_id": servers["alpha"], "tools": None}, {"server_id": servers["old"], "tools": None}]})
            db.session.commit()
        assert next(frames, None) == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                                      "params": {"_meta": {SUB: "l-1"}}}


def test_a_revoked_key_loses_its_listen(app, live_server, servers, quick):
    from app.models import VirtualKey

    key_id, key = add_key(app, {servers["alpha"]: None})
    with _listen(live_server, key, {"toolsListChanged": True}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the acknowledgement
        with app.app_context():
            db.session.get(VirtualKey, key_id).active = False
            db.session.commit()
        started = time.monotonic()
        for _ in lines:  # keep-alives, until the stream ends at the next check of the key
            assert time.monotonic() - started < 10
