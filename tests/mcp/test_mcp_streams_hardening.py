"""GET /mcp under attack (app/mcp/streams.py), over real HTTP against the real SDK upstream:
a stream whose key is revoked ends even while events keep coming; a grant taken away stops the
upstream pump of that server; one caller cannot take every stream of a worker; an upstream
flooding events cannot grow a session's event log without bound."""
from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from app.extensions import db
from app.mcp import streams
from app.models import McpSessionEvent
from tests.mcp.test_mcp_streams import Agent, _updated_until, beta  # noqa: F401 - the fixture
from tests.support.mcp import add_key

LIST_CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


def _flood(app, session_id: str, stop: threading.Event, every: float = 0.1) -> threading.Thread:
    def run():
        while not stop.is_set():
            with app.app_context():
                streams.publish(session_id, LIST_CHANGED)
                db.session.remove()
            stop.wait(every)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _ended(agent: Agent, within: float) -> bool:
    """Did the stream end (events drained meanwhile)?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if agent.next(timeout=0.5) is None:
                return True
        except queue.Empty:
            continue
    return False


def test_a_revoked_key_loses_its_stream_while_events_keep_coming(app, live_server, beta, monkeypatch):
    """The check runs on a clock of its own: a stream kept busy (an upstream flooding, or the
    agent itself causing events) never skips it."""
    from app.models import VirtualKey

    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 0.5)
    key_id, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key).listen()
    stop = threading.Event()
    flood = _flood(app, agent.session, stop)
    try:
        assert agent.next(timeout=5) == LIST_CHANGED
        with app.app_context():
            db.session.get(VirtualKey, key_id).active = False
            db.session.commit()
        assert _ended(agent, within=8), "the stream of a revoked key went on while events flowed"
    finally:
        stop.set()
        flood.join(timeout=5)


def test_a_grant_taken_away_stops_the_pump_of_that_server(app, live_server, beta, monkeypatch):
    """On the aggregated /mcp the stream stays (other servers may still be granted), but the
    upstream's GET stream of the server no longer granted is let go: nothing more of it arrives."""
    from app.models import VirtualKey
    from app.ops.keys import update_key

    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 0.3)
    key_id, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key).listen()
    assert agent.call("resources/subscribe", {"uri": "portcullis://beta/test://static/text"})["result"] == {}
    _updated_until(agent, agent, "beta__publish", "test://static/text", "portcullis://beta/test://static/text")
    assert (agent.session, beta) in streams.pumps._running
    with app.app_context():
        update_key(db.session.get(VirtualKey, key_id), {"mcp_servers": []})
        db.session.commit()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and _pumping(agent.session, beta):
        time.sleep(0.1)
    assert not _pumping(agent.session, beta), "the pump of a server no longer granted kept running"
    agent.end()


def _pumping(session_id: str, server_id: int) -> bool:
    pump = streams.pumps._running.get((session_id, server_id))
    return pump is not None and pump.thread.is_alive()


def test_one_caller_cannot_take_every_stream_of_a_worker(app, live_server, beta, monkeypatch):
    """At most PORTCULLIS_MAX_STREAMS_PER_CALLER streams per principal (429 beyond, with
    Retry-After); another key still gets its stream, and a stream closed gives its slot back."""
    budget = app.extensions["mcp_streams"]
    monkeypatch.setattr(budget, "per_caller", 2)
    _, key = add_key(app, {beta: None})
    _, other_key = add_key(app, {beta: None})
    mine = [Agent(live_server + "/mcp", key) for _ in range(3)]
    for agent in mine[:2]:
        assert agent.listen().status == 200
    with httpx.stream("GET", live_server + "/mcp", headers={**mine[2].headers, "Accept": "text/event-stream"},
                      timeout=10) as r:
        assert r.status_code == 429 and r.headers["Retry-After"] == "5"
        assert json.loads(r.read())["error"]["message"] == "too many open streams for this caller; close one first"
    other = Agent(live_server + "/mcp", other_key).listen()
    assert other.status == 200
    mine[0].end()  # DELETE: the stream ends and its slot is free
    deadline, status = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        with httpx.stream("GET", live_server + "/mcp", headers={**mine[2].headers, "Accept": "text/event-stream"},
                          timeout=10) as r:
            status = r.status_code
        if status != 429:
            break
        time.sleep(0.2)
    assert status == 200
    for agent in (mine[1], mine[2], other):
        agent.end()


def test_an_upstream_flooding_events_cannot_grow_the_log_without_bound(app, live_server, beta, monkeypatch):
    """The session's log keeps its newest PORTCULLIS_STREAM_MAX_EVENTS events, whether they come
    from the upstream's GET stream (the pump) or from publish()."""
    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_MAX_EVENTS", 3)
    _, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key).listen()
    assert agent.call("resources/subscribe", {"uri": "portcullis://beta/test://static/text"})["result"] == {}
    _updated_until(agent, agent, "beta__publish", "test://static/text", "portcullis://beta/test://static/text")
    for _ in range(8):
        agent.call("tools/call", {"name": "beta__publish", "arguments": {"uri": "test://static/text"}})
    received = 0
    while received < 8:  # all of them reached the stream (so all were written)
        assert agent.next(timeout=10)["method"] == "notifications/resources/updated"
        received += 1
    with app.app_context():
        assert _count(agent.session) == 3
        for _ in range(5):
            last = streams.publish(agent.session, LIST_CHANGED)
        assert _count(agent.session) == 3
        assert max(e.id for e in McpSessionEvent.query.filter_by(session_id=agent.session)) == last
        db.session.remove()
    agent.end()


def _count(session_id: str) -> int:
    return McpSessionEvent.query.filter_by(session_id=session_id).count()


ENDLESS = 256 * 1024 * 1024  # what "endless" sends at most: a reader without a bound takes it all
# What the upstream manages to send before it notices the hang-up includes what the kernel holds
# in socket buffers on both sides (tcp_wmem's and tcp_rmem's maximum: 4 + 32 MiB here, and
# loopback auto-tunes towards them under load), so the bound is what no reader that stops at
# MAX_EVENT_BYTES can exceed, far below ENDLESS.
SENT_BOUND = 48 * 1024 * 1024


class EndlessLine:
    """A raw stateful upstream whose GET stream sends one data line that never ends; it counts
    what it managed to send before the reader hung up."""

    def __init__(self):
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request, Response

        self.sent, self.cut = 0, threading.Event()
        upstream = self

        def answer(msg, result):
            r = Response(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), mimetype="application/json")
            r.headers["Mcp-Session-Id"] = "s1"
            return r

        def endless():
            try:
                yield b"event: message\ndata: "
                chunk = b"x" * 65536
                while upstream.sent < ENDLESS:
                    yield chunk
                    upstream.sent += len(chunk)
            finally:
                upstream.cut.set()

        @Request.application
        def app(request):
            if request.method == "GET":
                return Response(endless(), mimetype="text/event-stream")
            if request.method == "DELETE":
                return Response(status=200)
            msg = json.loads(request.get_data())
            if "id" not in msg:
                return Response(status=202)
            method = msg.get("method")
            if method == "initialize":
                return answer(msg, {"protocolVersion": "2025-11-25", "serverInfo": {"name": "raw", "version": "0"},
                                    "capabilities": {"tools": {}, "resources": {"subscribe": True}}})
            lists = {"tools/list": "tools", "resources/list": "resources", "resources/templates/list": "resourceTemplates"}
            if method in lists:
                return answer(msg, {lists[method]: []})
            if method == "resources/subscribe":
                return answer(msg, {})
            return Response(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}}),
                            mimetype="application/json")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/mcp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(timeout=5)


def test_an_upstream_sending_an_endless_line_is_cut_off(app, live_server):
    """The pump reads an upstream's GET stream without buffering a line or an event beyond
    MAX_EVENT_BYTES (1 MiB): the connection is dropped instead of the memory growing."""
    from tests.support.mcp import add_server

    upstream = EndlessLine()
    try:
        raw = add_server(app, "raw", upstream.url)
        _, key = add_key(app, {raw: None})
        agent = Agent(live_server + "/mcp", key).listen()
        assert agent.call("resources/subscribe", {"uri": "portcullis://raw/test://r"})["result"] == {}
        assert upstream.cut.wait(20), f"the pump kept reading ({upstream.sent} bytes)"
        assert upstream.sent <= SENT_BOUND
        agent.end()
    finally:
        upstream.close()
