"""GET /mcp streams under gunicorn, as `make run` serves (gunicorn.conf.py): a stream on one
instance receives what POSTs on another instance caused (two instances on one database:
PostgreSQL with LISTEN/NOTIFY on the PostgreSQL run, one SQLite file otherwise); 100 open
streams leave tool calls their usual latency (the stream budget, README "Serving model");
beyond PORTCULLIS_MAX_STREAMS a stream is refused with 503 and Retry-After."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.cluster import drop_database, fresh_database
from tests.support.mcp import ROOT, UPSTREAM_KEY, free_port, gateway_instance, serve, stop, wait_ready

ACCEPT = "application/json, text/event-stream"
SETUP = """from app.ops.servers import create_server
from app.ops.keys import create_key
from app.upstream.discovery import refresh
a = create_server({'name': 'alpha', 'url': '%(alpha)s'})
refresh(a)
b = create_server({'name': 'beta', 'url': '%(beta)s', 'auth_type': 'headers', 'headers': {'X-Api-Key': '%(key)s'}})
refresh(b)
db.session.flush()
k, secret = create_key({'name': 'agent', 'rate_limit_per_minute': 100000,
                        'mcp_servers': [{'server_id': a.id, 'tools': None}, {'server_id': b.id, 'tools': None}]},
                       source='api')
db.session.commit()
print(secret)"""


@pytest.fixture
def database():
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        yield None
        return
    name = url.rsplit("/", 1)[1].split("?")[0] + "_streams"
    yield fresh_database(url, name)
    drop_database(url, name)


def _start(tmp_path, upstreams, database, ports, **env_extra):
    env, secret = gateway_instance(str(tmp_path), ports[0], SETUP % {
        "alpha": upstreams["alpha"], "beta": upstreams["beta"], "key": UPSTREAM_KEY}, database=database)
    procs = []
    try:
        for port in ports:  # one database, one encryption key (instance/secrets.env)
            proc = serve("wsgi:app", {**env, "PORT": str(port), **env_extra}, "--access-logfile", "/dev/null",
                         stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_ready(proc, f"http://127.0.0.1:{port}/login")
    except BaseException:
        for proc in procs:
            stop(proc)
        raise
    return procs, secret


def _session(url: str, secret: str) -> dict:
    headers = {"Authorization": f"Bearer {secret}", "Accept": ACCEPT}
    r = httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200, r.text
    headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    assert httpx.post(url, headers=headers, timeout=10,
                      json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    return headers


def _call(url: str, headers: dict, name: str, arguments: dict, call_id: int = 1) -> dict:
    r = httpx.post(url, headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")][-1]
    return r.json()


class RawStream:
    """A GET /mcp held open on a plain socket (the test process holds 100 without 100 threads)."""

    def __init__(self, port: int, headers: dict):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in {**headers, "Accept": "text/event-stream"}.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.head = b""
        while b"\r\n\r\n" not in self.head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.head += chunk
        self.status = int(self.head.split(b" ", 2)[1]) if self.head else 0

    def close(self) -> None:
        self.sock.close()


class Listener:
    """A GET /mcp stream read in a thread; its messages in ``messages``."""

    def __init__(self, url: str, headers: dict):
        self.messages: list[dict] = []
        self.opened = threading.Event()
        self.status = None
        self._stop = False

        def run():
            try:
                with httpx.stream("GET", url, headers={**headers, "Accept": "text/event-stream"},
                                  timeout=httpx.Timeout(10, read=60)) as r:
                    self.status = r.status_code
                    self.opened.set()
                    for line in r.iter_lines():
                        if self._stop:
                            return
                        if line.startswith("data:") and line[5:].strip():
                            self.messages.append(json.loads(line[5:]))
            except httpx.HTTPError:
                pass
            finally:
                self.opened.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.opened.wait(10)


def _redis_url() -> str | None:
    """Redis for the bus variant (TEST_REDIS_URL; this suite's db 12 by default), None if down."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
    try:
        import redis
        return url if redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping() else None
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.parametrize("bus", ["database", "redis"])
def test_a_stream_receives_what_posts_on_another_instance_caused(tmp_path, upstreams, database, bus):
    """bus "database": PostgreSQL LISTEN/NOTIFY (or, on SQLite, no bus: the streams' poll);
    "redis": Redis pub/sub (REDIS_URL set on every instance)."""
    extra = {}
    if bus == "redis":
        url = _redis_url()
        if url is None:
            pytest.skip("no Redis (TEST_REDIS_URL)")
        extra = {"REDIS_URL": url, "PORTCULLIS_RATE_LIMIT_PREFIX": f"streams-test-{os.getpid()}"}
    port_a, port_b = free_port(), free_port()
    procs, secret = _start(tmp_path, upstreams, database, (port_a, port_b), **extra)
    try:
        a, b = f"http://127.0.0.1:{port_a}/mcp", f"http://127.0.0.1:{port_b}/mcp"
        headers = _session(a, secret)
        stream = Listener(a, headers)  # held by instance A
        assert stream.status == 200
        uri = "portcullis://beta/test://static/text"
        r = httpx.post(b, headers=headers, timeout=10, json={  # the subscription is made on instance B
            "jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": uri}})
        assert r.status_code == 200 and r.json()["result"] == {}, r.text
        # B's calls make the upstream announce an update on the upstream session both instances
        # share (the database); A's pump holds that session's GET stream
        deadline, updated = time.monotonic() + 30, None
        while updated is None and time.monotonic() < deadline:
            _call(b, headers, "beta__publish", {"uri": "test://static/text"}, 2)
            time.sleep(0.3)
            updated = next((m for m in stream.messages if m.get("method") == "notifications/resources/updated"), None)
        assert updated == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
        # an event published by a third process reaches the stream on A (bus: LISTEN/NOTIFY on
        # PostgreSQL; without a bus, SQLite: the stream's poll)
        env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": f"{tmp_path}/instance", "PORTCULLIS_SWEEP": "false"}
        env.pop("REDIS_URL", None)
        env.pop("DATABASE_URL", None)
        env.update(extra)
        if database:
            env["DATABASE_URL"] = database
        script = ("import time\nfrom app import create_app\nfrom app.mcp import streams\napp = create_app()\n"
                  "listener = app.extensions.get('invalidation_listener')\n"
                  "listener and listener.connected.wait(10)\n"
                  f"with app.app_context():\n    streams.publish({headers['Mcp-Session-Id']!r}, "
                  "{'jsonrpc': '2.0', 'method': 'notifications/tools/list_changed'})\n")
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                       check=True, timeout=60, capture_output=True)
        published = time.monotonic()
        deadline = published + 10
        while time.monotonic() < deadline and not any(
                m.get("method") == "notifications/tools/list_changed" for m in stream.messages):
            time.sleep(0.02)
        waited = time.monotonic() - published
        woken = bus == "redis" or database is not None
        print(f"\nan event published by another process reached the stream {waited * 1000:.0f} ms after that "
              f"process ended ({bus if woken else 'no bus: poll'}; the process took {published - started:.1f} s)")
        assert any(m.get("method") == "notifications/tools/list_changed" for m in stream.messages)
        if woken:
            assert waited < 1.5  # woken by the bus, not by a poll or a keep-alive (15 s)
        assert httpx.delete(b, headers=headers, timeout=10).status_code == 204  # ended on B
        stream.thread.join(timeout=10)
        assert not stream.thread.is_alive()  # the stream on A ended with it
    finally:
        for proc in procs:
            stop(proc)


def _p50(url: str, headers: dict, n: int = 60) -> float:
    """p50 of ``n`` sequential calls on one kept-alive connection (as an agent makes them)."""
    times = []
    with httpx.Client(headers=headers, timeout=30) as http:
        for i in range(n):
            started = time.perf_counter()
            r = http.post(url, json={"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                                     "params": {"name": "alpha__echo", "arguments": {"text": f"t{i}"}}})
            times.append(time.perf_counter() - started)
            assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == f"t{i}"
    return statistics.median(times)


def test_100_open_streams_do_not_starve_tool_calls(tmp_path, upstreams, database):
    port = free_port()
    procs, secret = _start(tmp_path, upstreams, database, (port,), PORTCULLIS_MAX_STREAMS="120",
                           PORTCULLIS_MAX_STREAMS_PER_CALLER="120")
    held: list[RawStream] = []
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        caller = _session(url, secret)
        _p50(url, caller, 10)  # warm up (connections, caches)
        before = _p50(url, caller)
        with ThreadPoolExecutor(8) as pool:
            sessions = list(pool.map(lambda _: _session(url, secret), range(100)))
        for headers in sessions:
            held.append(RawStream(port, headers))
        assert [s.status for s in held] == [200] * 100
        during = _p50(url, caller)
        with ThreadPoolExecutor(8) as pool:  # and a burst of concurrent calls
            burst = list(pool.map(lambda i: _call(url, caller, "alpha__echo", {"text": "b"}, 1000 + i), range(32)))
        assert all(m["result"]["content"][0]["text"] == "b" for m in burst)
        print(f"\ntools/call p50: {before * 1000:.1f} ms without streams, {during * 1000:.1f} ms with 100 open "
              f"GET /mcp streams")
        assert during < max(2 * before, before + 0.02)
    finally:
        for s in held:
            s.close()
        for proc in procs:
            stop(proc)


def test_streams_beyond_the_budget_are_refused(tmp_path, upstreams, database):
    port = free_port()
    procs, secret = _start(tmp_path, upstreams, database, (port,), PORTCULLIS_MAX_STREAMS="3",
                           PORTCULLIS_STREAM_KEEPALIVE_SECONDS="0.5")
    held: list[RawStream] = []
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        headers = _session(url, secret)
        held = [RawStream(port, headers) for _ in range(3)]
        assert [s.status for s in held] == [200] * 3
        r = httpx.get(url, headers={**headers, "Accept": "text/event-stream"}, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["message"] == "too many open streams on this server; retry later"
        assert _call(url, headers, "alpha__echo", {"text": "still"})["result"]["content"][0]["text"] == "still"
        held.pop().close()  # a client goes away: its slot is free once a keep-alive write fails
        deadline, again = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            again = RawStream(port, headers)
            if again.status == 200:
                break
            again.close()
            time.sleep(0.2)
        assert again is not None and again.status == 200
        held.append(again)
    finally:
        for s in held:
            s.close()
        for proc in procs:
            stop(proc)
