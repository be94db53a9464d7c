"""A malicious upstream answering a tool call with an endless body (JSON, or one SSE line that
never ends): Portcullis reads no further than MAX_BODY (app/upstream/client.py) and the agent gets
a tool error saying the answer is too large; the upstream sees the connection cut. A raw
upstream on a real socket, through /mcp over real HTTP."""
from __future__ import annotations

import json
import threading

import httpx
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.upstream import client as upstream_client
from tests.support.mcp import add_key, add_server

CHUNK = b"x" * 65536


ENDLESS = 256 * 1024 * 1024  # what "endless" sends at most: a reader without a bound takes it all
# What the upstream sends before it notices the hang-up includes what the kernel holds in socket
# buffers on both sides (tcp_wmem's and tcp_rmem's maximum, 4 + 32 MiB here; loopback auto-tunes
# towards them under load): the bound is one no reader that stops at MAX_BODY can exceed.
SENT_BOUND = 48 * 1024 * 1024


class Endless:
    def __init__(self):
        self.sent, self.cut = 0, threading.Event()

        def endless(head: bytes):
            try:
                yield head
                while self.sent < ENDLESS:
                    yield CHUNK
                    self.sent += len(CHUNK)
            finally:
                self.cut.set()

        @Request.application
        def app(request):
            msg = json.loads(request.get_data())
            if "id" not in msg:
                return Response(status=202)
            method, rid = msg.get("method"), msg["id"]
            if method == "initialize":
                return Response(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
                    "protocolVersion": "2025-11-25", "serverInfo": {"name": "raw", "version": "0"},
                    "capabilities": {"tools": {}}}}), mimetype="application/json")
            if method == "tools/list":
                tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("json", "sse")]
                return Response(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools}}),
                                mimetype="application/json")
            if method == "tools/call" and msg["params"]["name"] == "json":
                return Response(endless(b'{"jsonrpc":"2.0","id":%s,"result":{"x":"' % json.dumps(rid).encode()),
                                mimetype="application/json")
            if method == "tools/call":
                return Response(endless(b"event: message\ndata: "), mimetype="text/event-stream")
            return Response(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}),
                            mimetype="application/json")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/mcp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def endless():
    server = Endless()
    yield server
    server.close()


@pytest.mark.parametrize("tool", ["json", "sse"])
def test_an_endless_answer_is_cut_at_the_limit(app, live_server, endless, monkeypatch, tool):
    monkeypatch.setattr(upstream_client, "MAX_BODY", 2 * 1024 * 1024)
    raw = add_server(app, "raw", endless.url)
    _, key = add_key(app, {raw: None})
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    r = httpx.post(live_server + "/mcp", headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    headers["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
    r = httpx.post(live_server + "/mcp", headers={**headers, "Accept": "application/json"}, timeout=60, json={
        "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": f"raw__{tool}", "arguments": {}}})
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["isError"] is True and result["content"][0]["text"] == "raw: the answer is too large"
    assert endless.cut.wait(10)
    assert endless.sent <= SENT_BOUND
