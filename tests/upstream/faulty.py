"""A deliberately broken (or closely watched) upstream on plain http.server.

initialize and tools/list work; tools/call then fails the way the path says: /500, /garbage,
/deep (a result nested 5 000 levels), /drop, /slow, /html. /ok answers normally. /paged offers
prompts, listed in two pages (cursor "c2"). Every request is
recorded in SEEN as (path, method, Mcp-Session-Id); sessions are issued on initialize and can be
forgotten (clear LIVE_SESSIONS) to make the next request get HTTP 404."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [{"name": "x", "description": "fails", "inputSchema": {"type": "object"}}]
SEEN: list[tuple[str, str, str | None]] = []
LIVE_SESSIONS: set[str] = set()
_counter = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        mode = self.path.strip("/").split("/")[0]
        sid = self.headers.get("Mcp-Session-Id")
        SEEN.append((mode, msg.get("method", "response"), sid))
        if sid is not None and sid not in LIVE_SESSIONS:
            return self._json(404, {"error": "unknown session"})
        if "id" not in msg:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if msg["method"] == "initialize":
            _counter[0] += 1
            new_sid = f"s{_counter[0]}"
            LIVE_SESSIONS.add(new_sid)
            caps = {"tools": {}, "prompts": {}} if mode == "paged" else {"tools": {}}
            return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": caps,
                "serverInfo": {"name": "faulty", "version": "0"}}}, {"Mcp-Session-Id": new_sid})
        if msg["method"] == "tools/list":
            return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}})
        if msg["method"] == "prompts/list" and mode == "paged":
            cursor = (msg.get("params") or {}).get("cursor")
            page = {None: {"prompts": [{"name": "p1"}], "nextCursor": "c2"}, "c2": {"prompts": [{"name": "p2"}]}}
            if cursor not in page:
                return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32602,
                                                                                     "message": "bad cursor"}})
            return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": page[cursor]})
        if mode == "500":
            return self._json(500, {"error": "internal"})
        if mode in ("garbage", "deep"):
            body = b"{not json" if mode == "garbage" else (
                b'{"jsonrpc": "2.0", "id": %d, "result": ' % msg["id"] + b"[" * 5000 + b"]" * 5000 + b"}")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "html":
            body = b"<html>oops</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"jsonrpc": "2.0", "id"')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(3)
        return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
            "content": [{"type": "text", "text": "late" if mode == "slow" else "ok"}]}})


def start() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
