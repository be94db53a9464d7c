"""GET /mcp: each agent session's server-to-client stream, and what feeds it.

What an agent session is told outside its own calls (``notifications/resources/updated`` for
its subscriptions, ``*/list_changed``, log messages, server-to-client requests an upstream sends
outside a call) goes to that session's **event log** with ``publish(session_id, message)``: a
row of ``mcp_session_events`` (payload encrypted with the keyring; the row id is the SSE event
id), then a wake-up: in this process at once (a Condition per session), and in the other
workers and instances through the bus of app/cluster.py (topic ``stream:<session id>``: the
news that there is something, never the data). A stream reads the log after the last id it
sent, so ``Last-Event-ID`` on a reconnect replays what came after it (within the retention,
``PORTCULLIS_STREAM_RETENTION_SECONDS``, after which the sweeper trims the log). Without a bus
(SQLite), streams also look at the log every POLL_SECONDS.

While an agent holds its stream, Portcullis holds the upstream's own GET stream of each upstream
session that agent session holds of its own (``Pump``, app/mcp/upstream_sessions.py): what
arrives there is mapped (URIs wrapped on the aggregated /mcp, requests sealed by
app/mcp/relay.py so the agent's answer reaches the upstream from any instance) and published.
The upstream's SSE event ids are remembered per upstream session, and a pump that starts again
resumes with ``Last-Event-ID``.

Serving model (README "Serving model"): a stream holds one gunicorn thread while open, so
streams have a budget of their own: at most ``PORTCULLIS_MAX_STREAMS`` per worker (beyond it
GET /mcp is refused with 503 and Retry-After), of which one caller holds at most
``PORTCULLIS_MAX_STREAMS_PER_CALLER`` (beyond it 429: one agent cannot starve the others),
and gunicorn.conf.py gives each worker ``PORTCULLIS_THREADS + PORTCULLIS_MAX_STREAMS``
threads, so calls always keep their ``PORTCULLIS_THREADS``. An idle stream's thread sleeps on
its Condition (no CPU) and wakes for an event or to send a keep-alive comment
(``PORTCULLIS_STREAM_KEEPALIVE_SECONDS``), which is also how a vanished client is noticed (the
write fails).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import httpx
import mcp_types as types
from flask import current_app
from sqlalchemy import delete, func, select
from werkzeug.wrappers import Response

from .. import cluster
from ..extensions import db
from ..models import McpSessionEvent
from ..models.base import utcnow
from ..upstream.client import TooLarge, sse_lines
from . import upstream_sessions

log = logging.getLogger("portcullis.mcp")
TOPIC = "stream"  # app/cluster.py: stream:<session id> = that session has new events
POLL_SECONDS = 2.0  # without a bus: how often a stream looks at its log
BATCH = 100
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LIST_CHANGED = {"notifications/tools/list_changed", "notifications/prompts/list_changed",
                "notifications/resources/list_changed"}
MAX_EVENT_ID = 500
MAX_EVENT_BYTES = 1024 * 1024  # one event on an upstream's GET stream; a longer one ends that connection




# -- wake-ups in this process ----------------------------------------------------------------

class Hub:
    """A counter and a Condition per agent session with an open stream in this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: dict[str, list] = {}  # session id -> [Condition, counter, holders]

    def counter(self, sid: str) -> int:
        with self._lock:
            entry = self._waiters.get(sid)
            return entry[1] if entry else 0

    def enter(self, sid: str) -> None:
        with self._lock:
            entry = self._waiters.setdefault(sid, [threading.Condition(self._lock), 0, 0])
            entry[2] += 1

    def leave(self, sid: str) -> None:
        with self._lock:
            entry = self._waiters.get(sid)
            if entry is not None:
                entry[2] -= 1
                if entry[2] <= 0:
                    del self._waiters[sid]

    def wake(self, sid: str) -> None:
        with self._lock:
            entry = self._waiters.get(sid)
            if entry is not None:
                entry[1] += 1
                entry[0].notify_all()

    def wake_all(self) -> None:
        with self._lock:
            for entry in self._waiters.values():
                entry[1] += 1
                entry[0].notify_all()

    def wait(self, sid: str, seen: int, timeout: float) -> bool:
        """Sleep until the session's counter moves past ``seen`` (True) or ``timeout`` (False)."""
        with self._lock:
            entry = self._waiters.get(sid)
            if entry is None:
                return False
            return entry[0].wait_for(lambda: entry[1] != seen, timeout)


hub = Hub()


class Budget:
    """This worker's streams: at most ``total``, and at most ``per_caller`` of them for one
    principal (one agent cannot take every stream of a worker from the others)."""

    def __init__(self, total: int, per_caller: int):
        self._lock = threading.Lock()
        self.total, self.per_caller = total, per_caller
        self._held: dict[str, int] = {}

    def acquire(self, principal: str) -> str | None:
        """None when a stream may open; else why not ("caller" or "server")."""
        with self._lock:
            mine = self._held.get(principal, 0)
            if mine >= self.per_caller:
                return "caller"
            if sum(self._held.values()) >= self.total:
                return "server"
            self._held[principal] = mine + 1
            return None

    def release(self, principal: str) -> None:
        with self._lock:
            left = self._held.get(principal, 0) - 1
            if left > 0:
                self._held[principal] = left
            else:
                self._held.pop(principal, None)


def init_app(app) -> None:
    app.extensions["mcp_streams"] = Budget(app.config["PORTCULLIS_MAX_STREAMS"],
                                           app.config["PORTCULLIS_MAX_STREAMS_PER_CALLER"])
    app.extensions["mcp_client"].owned = upstream_sessions.OwnedSessions()
    store = app.extensions["mcp_sessions"]
    cluster.on_message(TOPIC, hub.wake)

    def session_changed(sid: str) -> None:  # e.g. ended, or a new upstream session held
        store.drop(sid)
        hub.wake(sid)
    from .sessions import SESSION_TOPIC
    cluster.on_message(SESSION_TOPIC, session_changed)
    cluster.register("streams", hub.wake_all)  # a reconnected listener may have missed wake-ups


def wake(session_id: str) -> None:
    """Tell every stream of this session, here and elsewhere, to look at its log."""
    hub.wake(session_id)
    cluster.send(TOPIC, session_id)


def publish(session_id: str, message: dict) -> int:
    """Add ``message`` to the session's event log and wake its streams; returns the event id."""
    event = McpSessionEvent(session_id=session_id, payload=message)
    db.session.add(event)
    _cap(session_id)
    db.session.commit()
    wake(session_id)
    return event.id


def _cap(session_id: str) -> None:
    """Keep the session's newest ``PORTCULLIS_STREAM_MAX_EVENTS`` events (in the caller's
    transaction): an upstream sending event after event, or an agent that never reads its
    stream, cannot grow the log beyond that within the retention. A reconnect older than
    the oldest kept event gets what is left."""
    keep = current_app.config["PORTCULLIS_STREAM_MAX_EVENTS"]
    oldest_dropped = db.session.scalar(select(McpSessionEvent.id).where(McpSessionEvent.session_id == session_id)
                                       .order_by(McpSessionEvent.id.desc()).offset(keep).limit(1))
    if oldest_dropped is not None:
        db.session.execute(delete(McpSessionEvent).where(McpSessionEvent.session_id == session_id,
                                                         McpSessionEvent.id <= oldest_dropped))


def trim(now=None, retention_seconds: int | None = None) -> tuple[int, int]:
    """The sweeper: delete events older than the retention, and agent sessions ended longer ago
    than that (their events and own upstream sessions go with them; a parked call of
    app/mcp/parked.py is such a session once its wait is over). Returns (events, sessions)."""
    from ..models import McpSession, McpUpstreamSession

    seconds = retention_seconds if retention_seconds is not None else \
        current_app.config["PORTCULLIS_STREAM_RETENTION_SECONDS"]
    cutoff = (now or utcnow()) - timedelta(seconds=seconds)
    events = db.session.execute(delete(McpSessionEvent).where(McpSessionEvent.created_at < cutoff)).rowcount or 0
    ended = select(McpSession.id).where(McpSession.ended_at < cutoff)
    # children first: SQLite enforces ON DELETE CASCADE only with its foreign_keys pragma
    events += db.session.execute(delete(McpSessionEvent).where(McpSessionEvent.session_id.in_(ended))).rowcount or 0
    db.session.execute(delete(McpUpstreamSession).where(McpUpstreamSession.agent_session_id.in_(ended)))
    sessions = db.session.execute(delete(McpSession).where(McpSession.ended_at < cutoff)).rowcount or 0
    return events, sessions


def _after(session_id: str, last_id: int) -> list[tuple[int, dict]]:
    rows = db.session.execute(select(McpSessionEvent.id, McpSessionEvent.payload).where(
        McpSessionEvent.session_id == session_id, McpSessionEvent.id > last_id)
        .order_by(McpSessionEvent.id).limit(BATCH)).all()
    return [(r[0], r[1]) for r in rows]


def _latest(session_id: str) -> int:
    return db.session.scalar(select(func.max(McpSessionEvent.id)).where(
        McpSessionEvent.session_id == session_id)) or 0


def _sse(event_id: int, message: dict) -> str:
    return f"id: {event_id}\nevent: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"


# -- the agent's stream ----------------------------------------------------------------------

def open_stream(ex, last_event_id: str | None) -> Response:
    """GET /mcp for ``ex.session`` (checked by the gateway): the SSE stream, or a refusal when
    this worker's stream budget is spent."""
    from .gateway import rpc_error

    if "text/event-stream" not in ex.req.headers.get("Accept", ""):
        return rpc_error(None, types.INVALID_REQUEST, "GET /mcp opens an SSE stream: Accept text/event-stream", 406)
    resume = None
    if last_event_id is not None:
        if not last_event_id.isdigit() or len(last_event_id) > 18:
            return rpc_error(None, types.INVALID_REQUEST, "invalid Last-Event-ID", 400)
        resume = int(last_event_id)
    app = current_app._get_current_object()
    budget, principal = app.extensions["mcp_streams"], ex.caller.principal
    refused = budget.acquire(principal)
    if refused == "caller":
        return rpc_error(None, types.INVALID_REQUEST, "too many open streams for this caller; close one first", 429,
                         {"Retry-After": "5"})
    if refused is not None:
        return rpc_error(None, types.INTERNAL_ERROR, "too many open streams on this server; retry later", 503,
                         {"Retry-After": "5"})
    try:
        start = resume if resume is not None else _latest(ex.session.id)
    except Exception:
        budget.release(principal)
        raise
    db.session.close()  # the stream takes a connection only while it reads the log
    body = Stream(app, ex, start, budget)
    return Response(body, mimetype="text/event-stream", headers={**SSE_HEADERS, "Mcp-Session-Id": ex.session.id})


class Stream:
    """The SSE body: an iterable whose ``close()`` (the server calls it, also when the client
    went away before the first byte) gives back the budget and stops the pumps."""

    def __init__(self, app, ex, last_id: int, budget):
        self.app, self.ex, self.last_id, self.budget = app, ex, last_id, budget
        self.sid, self.principal = ex.session.id, ex.caller.principal
        self.pumped: dict[int, Pump] = {}
        self._closed = False
        hub.enter(self.sid)

    def __iter__(self):
        app, sid = self.app, self.sid
        keepalive = float(app.config["PORTCULLIS_STREAM_KEEPALIVE_SECONDS"])
        wait = keepalive if cluster._bus[0] is not None else min(keepalive, POLL_SECONDS)
        store = app.extensions["mcp_sessions"]
        yield f"id: {self.last_id}\nretry: 2000\nevent: message\ndata: \n\n"  # the resume point (priming event)
        quiet_since = checked = time.monotonic()
        while not self._closed:
            if time.monotonic() - checked >= keepalive:  # on a clock of its own: a flow of events never skips it
                checked = time.monotonic()
                if not self._still_allowed():  # a key revoked, a token expired meanwhile: fail closed
                    return
            seen = hub.counter(sid)
            with app.app_context():
                try:
                    info = store.get(sid)
                    events = _after(sid, self.last_id) if info is not None else []
                    if info is not None:
                        self._sync_pumps(info)
                finally:
                    db.session.remove()
            if info is None:  # ended (DELETE), here or on another instance
                return
            for event_id, message in events:
                self.last_id = event_id
                yield _sse(event_id, message)
            if events:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"  # a client that went away makes this write fail
            hub.wait(sid, seen, wait)

    def _still_allowed(self) -> bool:
        """The caller's credentials and grants, checked again as a POST would check them. The
        stream goes on with the fresh caller: a pump of a server no longer granted stops (on
        the aggregated /mcp the stream itself stays for the servers still granted)."""
        caller = recheck(self.app, self.ex)
        if caller is None:
            return False
        self.ex.caller = caller
        for server_id in [s for s in self.pumped if s not in caller.allowlist]:
            pumps.release(self.pumped.pop(server_id))
        return True

    def _sync_pumps(self, info) -> None:
        """A pump for each upstream session this agent session holds (new ones appear when it
        subscribes or sets a log level while the stream is open)."""
        held = upstream_sessions.held(self.sid)
        snapshot = self.ex.caller.snapshot
        for server_id in held:
            if server_id in self.pumped:
                continue
            server = snapshot.servers.get(server_id)
            if server is None or server.id not in self.ex.caller.allowlist:
                continue
            pex = SimpleNamespace(caller=self.ex.caller, scope=self.ex.scope, id=None,
                                  session=replace(info, stateful=set(info.stateful) | {server_id}))
            self.pumped[server_id] = pumps.hold(self.app, pex, server)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pump in self.pumped.values():
            pumps.release(pump)
        self.pumped.clear()
        hub.leave(self.sid)
        self.budget.release(self.principal)


def recheck(app, ex):
    """The caller's credentials, checked again as a POST would check them: the caller as it is
    now (its current grants), or None when it may no longer use this endpoint."""
    from .. import identity

    scope = ex.scope
    with app.app_context():
        try:
            caller = identity.resolve(ex.req.environ, "mcp", scope.name if scope else None)
        except identity.Refusal:
            return None
        finally:
            db.session.remove()
    if caller.principal != ex.caller.principal or (scope is not None and scope.id not in caller.allowlist):
        return None
    return caller


def interrupt(resp) -> None:
    """Interrupt a read in progress on ``resp`` from another thread (a close alone would wait
    for the upstream's next line): the connection's socket is shut down, so it is not reused."""
    if resp is None:
        return
    try:
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - from another thread, best effort: the next ping ends it
        pass


def open_upstream_stream(client, ep, session, last_event_id: str | None, read_timeout: float):
    """The upstream session's GET stream (an httpx response to read, then close)."""
    headers = {k: v for k, v in client._headers(ep, session).items() if k != "Content-Type"}
    headers["Accept"] = "text/event-stream"
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    request = httpx.Request("GET", ep.url, headers=headers, extensions={"timeout": {
        "connect": ep.connect_timeout, "read": read_timeout, "write": ep.read_timeout,
        "pool": ep.connect_timeout}})
    return client.transport.handle_request(request)


# -- the upstreams' own GET streams ----------------------------------------------------------

class Pumps:
    """The pumps running in this process, one per (agent session, server), shared by the
    streams of that agent session here (a reconnecting agent keeps its pump)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[tuple, Pump] = {}

    def hold(self, app, ex, server) -> "Pump":
        key = (ex.session.id, server.id)
        with self._lock:
            pump = self._running.get(key)
            if pump is None or not pump.thread.is_alive():
                pump = Pump(app, ex, server, self)
                self._running[key] = pump
                pump.holders = 1
                pump.thread.start()
            else:
                pump.holders += 1
                pump.stop.clear()
            return pump

    def release(self, pump: "Pump") -> None:
        with self._lock:
            pump.holders -= 1
            if pump.holders <= 0:
                pump.stop.set()
                pump.close()

    def done(self, pump: "Pump") -> None:
        with self._lock:
            key = (pump.ex.session.id, pump.server.id)
            if self._running.get(key) is pump:
                del self._running[key]

    def count(self) -> int:
        with self._lock:
            return sum(1 for p in self._running.values() if p.thread.is_alive())


pumps = Pumps()


class Pump:
    """Holds the upstream's GET stream of one upstream session of an agent session, and
    publishes what arrives to that agent session's event log."""

    READ_TIMEOUT = 60.0  # SDK servers send a ping comment every 15 s; silence longer than this: reconnect

    def __init__(self, app, ex, server, registry: Pumps):
        self.app, self.ex, self.server, self.registry = app, ex, server, registry
        self.stop = threading.Event()
        self.holders = 0
        self.relayed: dict[str, str] = {}  # upstream request id -> relay id (for its cancellations)
        self._resp = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"portcullis-pump-{server.name}")

    def close(self) -> None:
        """Interrupt the read in progress (a close alone would wait for the upstream's next line):
        the connection's socket is shut down, so that connection is not reused."""
        interrupt(self._resp)

    def _run(self) -> None:
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    outcome = self._once()
                except Exception as e:  # noqa: BLE001 - logged, retried with a back-off
                    outcome = "failed"
                    if not self.stop.is_set():  # only messages known to be safe to show are logged
                        from .catalog import Failed
                        from ..upstream.client import UpstreamError
                        safe = isinstance(e, (UpstreamError, Failed))
                        log.info("the GET stream of %s for an agent session failed: %s", self.server.name,
                                 str(e)[:200] if safe else type(e).__name__)
                if outcome == "unsupported":
                    return
                failures = 0 if outcome == "ended" else min(failures + 1, 6)
                self.stop.wait(0.2 if outcome == "ended" else 0.25 * 2 ** failures)
        finally:
            self.registry.done(self)

    def _once(self) -> str:
        from . import catalog

        app, client = self.app, self.app.extensions["mcp_client"]
        sid = self.ex.session.id
        with app.app_context():
            try:
                if app.extensions["mcp_sessions"].get(sid) is None:
                    return "unsupported"  # the agent session ended: its upstream sessions too
                ep = catalog.endpoint(self.ex, self.server)
                session = client.session(ep)
                last = upstream_sessions.last_event_id(sid, self.server.id, session.session_id)
            finally:
                db.session.remove()
        resp = open_upstream_stream(client, ep, session, last, self.READ_TIMEOUT)
        self._resp = resp
        try:
            if resp.status_code == 404:  # the upstream forgot the session: the next turn starts a new one
                with app.app_context():
                    try:
                        client._forget(ep, session)
                    finally:
                        db.session.remove()
                return "failed"
            if resp.status_code == 405:  # no GET stream offered by this upstream
                return "unsupported"
            if resp.status_code == 409:  # another pump (another instance) holds it still
                return "failed"
            if not 200 <= resp.status_code < 300:
                return "failed"
            for event_id, data in _events(sse_lines(resp.iter_bytes(), MAX_EVENT_BYTES), self.stop):
                self._receive(ep, session, event_id, data)
            return "ended"
        except TooLarge:  # never buffered whole: the connection goes, the pump backs off
            log.info("the GET stream of %s sent an event beyond %d bytes: dropped", self.server.name, MAX_EVENT_BYTES)
            return "failed"
        except httpx.ReadTimeout:
            return "ended"
        except httpx.HTTPError:
            return "ended" if self.stop.is_set() else "failed"
        finally:
            self._resp = None
            resp.close()

    def _receive(self, ep, session, event_id, data: str) -> None:
        try:
            msg = json.loads(data) if data else None
        except (ValueError, RecursionError):
            msg = None
        sid = self.ex.session.id
        with self.app.app_context():
            try:
                out = self._map(ep, session, msg) if isinstance(msg, dict) else None
                if out is not None:
                    db.session.add(McpSessionEvent(session_id=sid, payload=out))
                    _cap(sid)
                if event_id:  # resumable upstream: its position, for the next GET (same commit as the event)
                    upstream_sessions.remember_event_id(sid, self.server.id, event_id[:MAX_EVENT_ID], commit=False)
                db.session.commit()
                if out is not None:
                    wake(sid)
            finally:
                db.session.remove()

    def _map(self, ep, session, msg: dict) -> dict | None:
        """The upstream's message as this agent session receives it, or None."""
        from . import catalog, relay

        method = msg.get("method")
        if not isinstance(method, str):
            return None  # a response: nothing asked on this stream
        if "id" in msg:  # a server-to-client request outside a call: sealed, answered from any instance
            out = relay.outgoing(self.ex, self.server, SimpleNamespace(ep=ep, session=session), msg)
            if out is not None:
                self.relayed[json.dumps(msg["id"])] = out["id"]
            return out
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if method == "notifications/resources/updated":
            if self.ex.scope is None:
                params = {**params, "uri": catalog.wrap_uri(self.server, params.get("uri"))}
            return {"jsonrpc": "2.0", "method": method, "params": params}
        if method in LIST_CHANGED:
            if method == "notifications/tools/list_changed":
                from ..upstream.discovery import refresh_now
                refresh_now(self.server.id)
            return {"jsonrpc": "2.0", "method": method}
        if method == "notifications/message":
            info = current_app.extensions["mcp_sessions"].get(self.ex.session.id)
            floor = LOG_LEVELS.index(info.log_level) if info is not None and info.log_level in LOG_LEVELS else 0
            level = params.get("level")
            return msg if level in LOG_LEVELS and LOG_LEVELS.index(level) >= floor else None
        if method == "notifications/cancelled":
            relay_id = self.relayed.pop(json.dumps(params.get("requestId")), None)
            return {**msg, "params": {**params, "requestId": relay_id}} if relay_id else None
        return None


def _events(lines, stop: threading.Event):
    """(id, data) of each SSE event; checks ``stop`` at every line (pings included). An event
    whose data lines add up beyond MAX_EVENT_BYTES raises TooLarge."""
    data: list[str] = []
    size = 0
    event_id = None
    for line in lines:
        if stop.is_set():
            return
        if line == "":
            if data or event_id:
                yield event_id, "\n".join(data)
            data, event_id, size = [], None, 0
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                size += len(value) + 1
                if size > MAX_EVENT_BYTES:
                    raise TooLarge()
                data.append(value)
            elif name == "id":
                event_id = value
