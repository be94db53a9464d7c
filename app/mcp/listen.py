"""``subscriptions/listen`` (MCP 2026-07-28, SEP-2575) towards agents.

In 2026-07-28 there is no GET stream: change notifications (``*/list_changed``,
``notifications/resources/updated``) reach an agent only on the SSE answer to its
``subscriptions/listen`` request, which stays open until the agent hangs up. As the SDK's
server does (mcp/server/subscriptions.py), the first frame acknowledges the honored filter
(``notifications/subscriptions/acknowledged``), every frame carries the listen request's id
under ``_meta["io.modelcontextprotocol/subscriptionId"]``, and nothing outside the honored
filter is sent. There is no replay: an agent that listens again refetches.

Honored: each list_changed flag asked (as the SDK does: a kind may never fire), and the
resource URIs that name a resource of a reachable server: on ``/mcp/<name>`` the upstream's
own URIs (when it offers resources); on the aggregated ``/mcp`` the ``portcullis://<server>/<uri>``
form of a granted server offering resources. Anything else (an ungranted or unknown server, a
URI of no server, extension keys) is left out of the acknowledgement and never heard of.

Where events come from, per granted server (a thread each, ``Source``):

- an upstream of 2026-07-28: Portcullis's own ``subscriptions/listen`` to it, with the mapped
  filter (upstream URIs), held while the agent listens;
- an upstream of the initialize era: an upstream session of this listen's own (initialize,
  ``resources/subscribe`` for each URI, its GET stream), unsubscribed and ended (DELETE) when
  the agent's listen ends;
- Portcullis itself: ``tools/list_changed`` when the tools this caller sees change (a server's
  list refreshed, grants changed), noticed when the caller is checked again at each keep-alive.

A listen holds one gunicorn thread, like a GET stream: it counts against the same budget
(``PORTCULLIS_MAX_STREAMS``; beyond it the request is refused before the acknowledgement, as
the SDK refuses past its subscription limit), sends keep-alive comments every
``PORTCULLIS_STREAM_KEEPALIVE_SECONDS`` (which is how a vanished agent is noticed) and ends
when the caller's key or token no longer allows it (app/mcp/streams.py ``recheck``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import mcp_types as types
from flask import current_app
from werkzeug.wrappers import Response

from ..credentials import SignInAgain
from ..extensions import db
from ..upstream.client import UpstreamError
from . import catalog, streams
from . import tools as toolnames

log = logging.getLogger("portcullis.mcp")
METHOD = "subscriptions/listen"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"  # mcp.shared.subscriptions.SUBSCRIPTION_ID_META_KEY
UPDATED = "notifications/resources/updated"
# filter flag -> its notification, the capability a server needs to send it, the SDK type's field
FLAGS = {"toolsListChanged": ("notifications/tools/list_changed", "tools", "tools_list_changed"),
         "promptsListChanged": ("notifications/prompts/list_changed", "prompts", "prompts_list_changed"),
         "resourcesListChanged": ("notifications/resources/list_changed", "resources", "resources_list_changed")}
MAX_BACKLOG = 1024  # events not yet written to the agent; beyond it the stream ends (the agent re-listens)
READ_TIMEOUT = 60.0  # SDK servers ping every 15 s on these streams: silence longer than this, reconnect


@dataclass
class Plan:
    """What one listen honors and where its events come from."""

    honored: dict  # the acknowledged filter, in its wire form
    methods: frozenset  # the list_changed notifications honored
    uris: dict = field(default_factory=dict)  # server id -> {upstream URI: URI as the agent named it}
    servers: list = field(default_factory=list)  # the servers to hear from


def plan(ex, wanted: types.SubscriptionFilter) -> Plan:
    honored = {flag: True for flag, (_, _, attr) in FLAGS.items() if getattr(wanted, attr)}
    uris: dict[int, dict[str, str]] = {}
    kept: list[str] = []
    for uri in wanted.resource_subscriptions or ():
        if ex.scope is not None:
            found = (ex.scope, uri) if ex.scope.offers("resources") else None
        else:
            found = catalog.unwrap_uri(ex, uri)  # None: not granted, unknown, not a Portcullis URI
        if found is None:
            continue
        uris.setdefault(found[0].id, {})[found[1]] = uri
        kept.append(uri)  # echoed as asked, as the SDK does
    if kept:
        honored["resourceSubscriptions"] = kept
    methods = frozenset(FLAGS[f][0] for f in honored if f in FLAGS)
    servers = []
    snapshot = ex.caller.snapshot.servers
    candidates = [ex.scope] if ex.scope is not None else sorted(
        (snapshot[sid] for sid in ex.caller.allowlist), key=lambda s: s.name)
    for server in candidates:
        listens = any(f in honored and (cap == "tools" or server.offers(cap)) for f, (_, cap, _) in FLAGS.items())
        if listens or server.id in uris:
            servers.append(server)
    return Plan(honored, methods, uris, servers)


def open_listen(ex, params: dict) -> Response:
    """subscriptions/listen of a 2026-07-28 agent (``ex.modern``): the SSE stream, or an error."""
    if not ex.takes_sse:  # the answer IS a stream (the SDK answers 406 too)
        return Response(status=406)
    try:
        wanted = types.SubscriptionsListenRequestParams.model_validate(params).notifications
    except ValueError:
        return ex.error(types.INVALID_PARAMS, "invalid params: notifications must be a subscription filter")
    the_plan = plan(ex, wanted)
    app = current_app._get_current_object()
    budget = app.extensions["mcp_streams"]  # GET streams' budget: per worker and per caller
    refused = budget.acquire(ex.caller.principal)
    if refused is not None:
        why = "too many open streams for this caller; close one first" if refused == "caller" else \
            "Subscription limit reached; retry later"
        return ex.answer({"jsonrpc": "2.0", "id": ex.id, "error": {"code": types.INTERNAL_ERROR, "message": why}},
                         {"Retry-After": "5"})
    db.session.close()
    return Response(Listen(app, ex, the_plan, budget), mimetype="text/event-stream", headers=streams.SSE_HEADERS)


def _frame(message: dict) -> str:
    return f"event: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"


def _fingerprint(caller, scope) -> str:
    names = sorted(t.get("name", "") for t in toolnames.visible(caller, scope))
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()


class Listen:
    """The SSE body of one listen; ``close()`` (the server calls it when the agent hangs up)
    stops the sources and gives back the budget."""

    def __init__(self, app, ex, the_plan: Plan, budget):
        self.app, self.ex, self.plan, self.budget = app, ex, the_plan, budget
        self.meta = {SUBSCRIPTION_ID: ex.id}
        self.events: queue.Queue = queue.Queue(MAX_BACKLOG)
        self.stop = threading.Event()
        self.overflow = False
        self.sources = [Source(self, server) for server in the_plan.servers]
        self._closed = False

    def put(self, method: str, params: dict | None = None) -> None:
        """An event for the agent (from a source thread)."""
        try:
            self.events.put_nowait((method, params))
        except queue.Full:  # the agent stopped reading: end its stream
            self.overflow = True

    def __iter__(self):
        app, ex = self.app, self.ex
        keepalive = float(app.config["PORTCULLIS_STREAM_KEEPALIVE_SECONDS"])
        yield _frame({"jsonrpc": "2.0", "method": ACKNOWLEDGED,
                      "params": {"notifications": self.plan.honored, "_meta": self.meta}})
        tools = "notifications/tools/list_changed" in self.plan.methods
        seen_tools = _fingerprint(ex.caller, ex.scope) if tools else None
        for source in self.sources:
            source.start()
        checked = time.monotonic()
        while not self._closed and not self.overflow:
            try:
                yield self._event(*self.events.get(timeout=max(0.0, checked + keepalive - time.monotonic())))
            except queue.Empty:
                pass
            if time.monotonic() - checked < keepalive:
                continue
            checked = time.monotonic()
            caller = streams.recheck(app, ex)  # a key revoked, a token expired meanwhile: fail closed
            if caller is None:
                return
            if tools:  # Portcullis's own list: refreshed, or the grants changed
                now = _fingerprint(caller, ex.scope)
                if now != seen_tools:
                    seen_tools = now
                    yield self._event("notifications/tools/list_changed")
            yield ": keep-alive\n\n"  # a client that went away makes this write fail

    def _event(self, method: str, params: dict | None = None) -> str:
        return _frame({"jsonrpc": "2.0", "method": method, "params": {**(params or {}), "_meta": self.meta}})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        for source in self.sources:
            source.close()
        self.budget.release(self.ex.caller.principal)

    # -- what a server's notification becomes for the agent ---------------------------------

    def receive(self, server, msg: dict) -> None:
        method = msg.get("method")
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if method == UPDATED:
            uri = params.get("uri")
            if not isinstance(uri, str) or not self.plan.uris.get(server.id):
                return  # sub-resources of a subscribed URI may come too (the spec allows them)
            self.put(UPDATED, {"uri": uri if self.ex.scope is not None else catalog.wrap_uri(server, uri)})
        elif method in self.plan.methods:
            if method == "notifications/tools/list_changed":
                from ..upstream.discovery import refresh_now
                with self.app.app_context():
                    refresh_now(server.id)  # the stored list follows
            self.put(method)


class Source:
    """The events of one upstream server for one listen, in a thread of its own."""

    def __init__(self, listen: Listen, server):
        self.listen, self.server = listen, server
        self.stop = listen.stop
        self._resp = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"portcullis-listen-{server.name}")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        streams.interrupt(self._resp)

    def _run(self) -> None:
        app, failures = self.listen.app, 0
        client = app.extensions["mcp_client"]
        try:
            with app.app_context():
                try:
                    ep = catalog.endpoint(self.listen.ex, self.server).waiting(READ_TIMEOUT)
                    peer = client.peer(ep)
                finally:
                    db.session.remove()
        except (catalog.Failed, SignInAgain, UpstreamError) as e:
            log.info("no listen on %s: %s", self.server.name, _safe(e))
            return
        legacy = None if peer.modern else _Legacy(self, client, ep)
        try:
            while not self.stop.is_set():
                try:
                    outcome = self._modern(client, ep, peer.modern) if legacy is None else legacy.run()
                except Exception as e:  # noqa: BLE001 - logged, tried again with a back-off
                    outcome = "failed"
                    if not self.stop.is_set():
                        log.info("the listen on %s failed: %s", self.server.name, _safe(e))
                if outcome == "unsupported":
                    return
                failures = 0 if outcome == "ended" else min(failures + 1, 6)
                self.stop.wait(0.2 if outcome == "ended" else 0.25 * 2 ** failures)
        finally:
            if legacy is not None:
                legacy.end()

    def _filter(self) -> dict:
        """The agent's filter as this upstream is asked it: its own URIs, what it can send."""
        out = {f: True for f, (_, cap, _) in FLAGS.items()
               if f in self.listen.plan.honored and (cap == "tools" or self.server.offers(cap))}
        uris = list(self.listen.plan.uris.get(self.server.id, {}))
        if uris:
            out["resourceSubscriptions"] = uris
        return out

    def _modern(self, client, ep, version: str) -> str:
        envelope = self.listen.ex.upstream_envelope()
        call = client._open_modern(ep, version, METHOD, {"notifications": self._filter()}, envelope)
        self._resp = call.resp
        try:
            if self.stop.is_set():
                return "ended"
            for msg in call.messages():
                if "method" not in msg:  # the upstream closed its stream (or refused the listen)
                    return "ended" if "result" in msg else "unsupported"
                if msg.get("method") != ACKNOWLEDGED:
                    self.listen.receive(self.server, msg)
            return "ended"
        except UpstreamError:
            return "ended" if self.stop.is_set() else "failed"
        finally:
            self._resp = None
            call.close()


class _Legacy:
    """An initialize-era upstream: a session of this listen's own, its subscriptions, its GET
    stream; ended upstream when the listen ends."""

    def __init__(self, source: Source, client, ep):
        self.source, self.client = source, client
        self.ep = ep.owned_by("listen-" + uuid.uuid4().hex)  # never pooled, never stored
        self.session = None

    def run(self) -> str:
        source, client, ep = self.source, self.client, self.ep
        if self.session is None:
            self.session = client._initialize(ep)
            try:
                for uri in source.listen.plan.uris.get(source.server.id, {}):
                    self._request("resources/subscribe", {"uri": uri})
            except Exception:
                self.end()
                raise
        if source.stop.is_set():
            return "ended"
        resp = streams.open_upstream_stream(client, ep, self.session, None, READ_TIMEOUT)
        source._resp = resp
        try:
            if resp.status_code == 404:  # the upstream forgot the session: a new one next turn
                self.session = None
                return "failed"
            if resp.status_code == 405:  # no GET stream offered
                return "unsupported"
            if not 200 <= resp.status_code < 300:
                return "failed"
            for _, data in streams._events(resp.iter_lines(), source.stop):
                try:
                    msg = json.loads(data) if data else None
                except (ValueError, RecursionError):
                    continue
                if isinstance(msg, dict) and "id" not in msg:
                    source.listen.receive(source.server, msg)
            return "ended"
        except Exception:  # noqa: BLE001 - the read was interrupted (the listen ended) or dropped
            return "ended" if source.stop.is_set() else "failed"
        finally:
            source._resp = None
            resp.close()

    def _request(self, method: str, params: dict) -> None:
        body = {"jsonrpc": "2.0", "id": next(self.client._ids), "method": method, "params": params}
        msg = self.client._open(self.ep, body, self.session).result()
        if "error" in msg:
            log.info("%s on %s refused: %s", method, self.source.server.name, (msg["error"] or {}).get("message"))

    def end(self) -> None:
        """Unsubscribe, then end the upstream session (DELETE)."""
        if self.session is None:
            return
        for uri in self.source.listen.plan.uris.get(self.source.server.id, {}):
            try:
                self._request("resources/unsubscribe", {"uri": uri})
            except Exception:  # noqa: BLE001 - the DELETE below ends them anyway
                break
        self.client._delete(self.ep, self.session)
        self.session = None


def _safe(e: Exception) -> str:
    """Only messages known to be safe to show are logged."""
    return str(e)[:200] if isinstance(e, (UpstreamError, catalog.Failed)) else type(e).__name__
