"""Portcullis's upstream client decides each upstream's protocol era from one server/discover:
only a valid answer naming 2026-07-28 makes it speak that revision; -32601, HTTP 400/404/405 and
an answer of older versions mean initialize (kept an hour); a failed probe (5xx, garbage, a
timeout) means initialize for a minute; 401 is the credential's matter. A raw upstream on a
real socket answers server/discover each way and records what it was sent."""
from __future__ import annotations

import json
import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.upstream import client as upstream
from app.upstream.client import Endpoint, UpstreamClient, UpstreamRefused

SEEN: list[tuple[str, str | None, str | None]] = []  # (method, MCP-Protocol-Version, Mcp-Method)
MODERN_RESULT = {"supportedVersions": ["2026-07-28", "2025-11-25"], "capabilities": {"tools": {}},
                 "resultType": "complete", "ttlMs": 0, "cacheScope": "public",
                 "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "raw", "version": "0"}}}


def _json(payload, status=200):
    return Response(json.dumps(payload), status=status, mimetype="application/json")


@Request.application
def raw(request: Request):
    msg = json.loads(request.get_data())
    mode = request.path.strip("/").split("/")[0]
    SEEN.append((msg.get("method"), request.headers.get("MCP-Protocol-Version"), request.headers.get("Mcp-Method")))
    if "id" not in msg:
        return Response(status=202)
    if msg["method"] == "server/discover":
        if mode == "modern":
            return _json({"jsonrpc": "2.0", "id": msg["id"], "result": MODERN_RESULT})
        if mode == "old-versions":
            return _json({"jsonrpc": "2.0", "id": msg["id"], "result": {**MODERN_RESULT,
                                                                         "supportedVersions": ["2025-11-25"]}})
        if mode == "rpc-error":
            return _json({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}})
        if mode in ("400", "404", "405", "500", "401"):
            return Response("no", status=int(mode))
        if mode == "garbage":
            return Response("{not json", mimetype="application/json")
        if mode == "slow":
            time.sleep(1.0)
    if msg["method"] == "initialize":
        resp = _json({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "0"}}})
        resp.headers["Mcp-Session-Id"] = "s1"
        return resp
    if msg["method"] == "tools/list":
        return _json({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": []}})
    modern = request.headers.get("MCP-Protocol-Version") == "2026-07-28"  # its errors come with 404
    return _json({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}}, 404 if modern else 200)


@pytest.fixture(scope="module")
def base():
    srv = make_server("127.0.0.1", 0, raw, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def _ep(base, mode, read_timeout=5.0):
    return Endpoint(1, mode, f"{base}/{mode}/mcp", (), 2.0, read_timeout)


def test_only_a_discover_result_naming_2026_makes_an_upstream_modern(base):
    c = UpstreamClient()
    peer = c.peer(_ep(base, "modern"))
    assert peer.modern == "2026-07-28" and peer.capabilities == {"tools": {}}
    assert peer.server_info == {"name": "raw", "version": "0"}
    assert SEEN[-1] == ("server/discover", "2026-07-28", "server/discover")
    for mode in ("old-versions", "rpc-error", "400", "404", "405"):
        peer = c.peer(_ep(base, mode))
        assert peer.modern is None and peer.until - time.monotonic() > 3000, mode  # kept an hour
    for mode in ("500", "garbage"):
        peer = c.peer(_ep(base, mode))
        assert peer.modern is None and peer.until - time.monotonic() < 61, mode  # asked again soon
    peer = c.peer(_ep(base, "slow", read_timeout=0.3))
    assert peer.modern is None and peer.until - time.monotonic() < 61
    with pytest.raises(UpstreamRefused):
        c.peer(_ep(base, "401"))
    c.close()


def test_the_answer_is_asked_once_and_each_era_is_spoken(base):
    c = UpstreamClient()
    SEEN.clear()
    for _ in range(3):
        c.peer(_ep(base, "modern"))
        c.peer(_ep(base, "404"))
    assert [m for m, _, _ in SEEN].count("server/discover") == 2  # once per upstream
    SEEN.clear()
    tools, caps = c.discover(_ep(base, "404"))  # discovery asks again, then initializes
    assert [m for m, _, _ in SEEN] == ["server/discover", "initialize", "notifications/initialized", "tools/list"]
    SEEN.clear()
    tools, caps = c.discover(_ep(base, "modern"))  # stateless: no initialize at all
    assert [s[0] for s in SEEN] == ["server/discover", "tools/list"] and caps == {"tools": {}}
    assert SEEN[-1] == ("tools/list", "2026-07-28", "tools/list")
    SEEN.clear()
    msg = c.request(_ep(base, "modern"), "tools/call", {"name": "x"}, envelope=upstream.PORTCULLIS)
    assert msg["error"]["code"] == -32601 and SEEN == [("tools/call", "2026-07-28", "tools/call")]  # HTTP 404
    SEEN.clear()
    c.request(_ep(base, "modern"), "tools/call", {"name": "x"})  # no envelope: over a session
    assert [m for m, _, _ in SEEN] == ["initialize", "notifications/initialized", "tools/call"]
    c.close()
