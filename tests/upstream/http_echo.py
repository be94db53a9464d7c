"""A plain HTTP upstream for the proxy tests and bench/proxy_overhead.py (http.server, threaded).

Every path echoes what it received as JSON (method, raw path, raw query, headers in order,
body; and ``effective_method``: the method after honouring a method override as lenient
frameworks do, X-HTTP-Method-Override / X-HTTP-Method / X-Method-Override or ``?_method=``),
except:

  /upload                  reads the body as it comes (Content-Length or chunked) and answers
                           its length and sha256; &gate=G sets gate(G) when the first bytes arrive
  /download?bytes=N        N bytes of a fixed pattern (Content-Length; &chunked=1: chunked)
  /stream?chunks=N&gate=G  N chunked pieces; after the first it waits until gate(G) is set (at
                           most 20 s; then it ends with "gate timed out" instead)
  /slow?delay=S            answers after S seconds (&gate=G: once gate(G) is set, at most 20 s)
  /close                   closes the connection without answering
  /break?bytes=N           announces 2N bytes, sends N, closes
  /redirect?to=URL         302 to URL
  /status?code=N           answers N with a few headers a proxy must handle (cookies, hop-by-hop,
                           rate-limit headers of its own, headers that would act on the browser's
                           origin, a content security policy of its own)
  .../files/NAME           an upstream that stores uploads (object storage, a wiki): PUT keeps the
                           body and its Content-Type under NAME, GET and HEAD serve them back (404
                           when unknown)

Gates let an in-process test see what happens *while* a body streams, without timing it:
``gate(name)`` is a threading.Event shared by the test and this server.

usage as a process: python tests/upstream/http_echo.py --port N
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)
OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
GATE_TIMEOUT = 20.0
_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def gate(name: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(name, threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo/1"
    disable_nagle_algorithm = True  # headers and body go in separate writes

    def log_message(self, *args):
        pass

    # -- helpers ---------------------------------------------------------------------------

    def _params(self) -> dict:
        query = self.path.partition("?")[2]
        return {k: v[-1] for k, v in parse_qs(query).items()}

    def _body_chunks(self):
        """The request body as it arrives (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        return
                    left -= len(data)
                    yield data
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    return
                left -= len(data)
                yield data

    def _json(self, status: int, payload, headers=()):
        body = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- modes -----------------------------------------------------------------------------

    def _file(self, name: str):
        files = self.server.files
        if self.command == "PUT":
            body = b"".join(self._body_chunks())
            files[name] = (self.headers.get("Content-Type") or "application/octet-stream", body)
            return self._json(201, {"stored": name, "body_length": len(body)})
        if name not in files:
            return self._json(404, {"error": f"no file {name}"})
        content_type, body = files[name]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        if "/files/" in self.path.partition("?")[0]:
            return self._file(self.path.partition("?")[0].split("/files/", 1)[1])
        mode = self.path.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
        p = self._params()
        if mode == "upload":
            digest, length = hashlib.sha256(), 0
            for data in self._body_chunks():
                if not length and "gate" in p:
                    gate(p["gate"]).set()
                digest.update(data)
                length += len(data)
            return self._json(200, {"body_length": length, "body_sha256": digest.hexdigest(),
                                    "chunked": "chunked" in (self.headers.get("Transfer-Encoding") or "")})
        body = b"".join(self._body_chunks())
        if mode == "download":
            n = int(p.get("bytes", "0"))
            chunked = p.get("chunked") == "1"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(n))
            self.end_headers()
            if self.command == "HEAD":
                return
            while n > 0:
                piece = PATTERN[:min(n, CHUNK)]
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                n -= len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(p.get("chunks", "3"))):
                if i == 1 and "gate" in p and not gate(p["gate"]).wait(GATE_TIMEOUT):
                    self._chunk(b"gate timed out\n")
                    break
                self._chunk(f"chunk {i}\n".encode())
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "slow":
            if "gate" in p:
                gate(p["gate"]).wait(GATE_TIMEOUT)
            else:
                time.sleep(float(p.get("delay", "1")))
        if mode == "close":
            self.close_connection = True
            return
        if mode == "break":
            n = int(p.get("bytes", "1000"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(2 * n))
            self.end_headers()
            self.wfile.write(PATTERN[:1] * n)
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", p.get("to", "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = int(p.get("code", "200")) if mode == "status" else 200
        headers = []
        if mode == "status":
            headers = [("Set-Cookie", "upstream=1; Path=/"), ("Connection", "X-Hop"), ("X-Hop", "1"),
                       ("X-RateLimit-Limit", "5000"), ("RateLimit-Limit", "5000"), ("Vary", "Accept"),
                       ("Vary", "Origin"), ("Service-Worker-Allowed", "/"), ("Clear-Site-Data", '"*"'),
                       ("X-Content-Type-Options", "sniff"), ("Cross-Origin-Resource-Policy", "cross-origin"),
                       ("Content-Security-Policy", "img-src 'self'")]
            if status in (204, 304):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                return
        raw_path, _, raw_query = self.path.partition("?")
        override = next((self.headers[h] for h in OVERRIDE_HEADERS if self.headers.get(h)), None)
        override = override or next((v[-1] for k, v in parse_qs(raw_query).items() if k.lower() == "_method"), None)
        self._json(status, {
            "method": self.command, "effective_method": (override or self.command).upper(),
            "path": raw_path, "query": raw_query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"), "body_length": len(body),
        }, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_PROPFIND = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files: dict[str, tuple[str, bytes]] = {}  # /files/NAME -> (Content-Type, body)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client (a timed-out proxy) went away
        super().handle_error(request, client_address)


def start(port: int = 0) -> tuple[Server, str]:
    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    Server(("127.0.0.1", args.port), Handler).serve_forever()
