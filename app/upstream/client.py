"""Talking to upstream MCP servers over Streamable HTTP, as a client.

One process-wide pooled httpx client (keep-alive), one upstream session per (server URL,
credential) that is initialised once and reused, one re-initialise when the upstream forgets
a session (HTTP 404). Answers may be JSON or SSE. Every failure becomes an ``UpstreamError``
whose message is safe to show an agent: it names the server and the failure, never a header.

Protocol era, per upstream: ``server/discover`` is tried once (cached per server and URL; a
discovery refresh asks again). An upstream that answers it with 2026-07-28 among its versions
is spoken to statelessly (no initialize, no session, the envelope in every request's
``_meta``) whenever the caller asks for it (``open(..., envelope=...)``); one that answers
-32601 or HTTP 400/404/405 gets the initialize handshake, as do calls that need a session.

The handshake is built from the ``mcp`` SDK's types. A ``tools/call`` is forwarded with the
caller's params untouched and its result handed back untouched (not re-validated through
pydantic models), so every field the upstream sends reaches the agent, whatever protocol
revision added it, and the hot path stays cheap.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import httpx
import mcp_types as types
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION, MODERN_PROTOCOL_VERSIONS

CLIENT_INFO = types.Implementation(name="portcullis", version="1.0")
# What Portcullis offers upstreams as a client: the server-to-client requests it relays to the
# agent whose call is running (refused per request when that agent did not declare them).
RELAYED_CAPABILITIES = types.ClientCapabilities(
    sampling=types.SamplingCapability(),
    elicitation=types.ElicitationCapability(form=types.FormElicitationCapability(),
                                            url=types.UrlElicitationCapability()),
    roots=types.RootsCapability(list_changed=False),
)
MAX_SESSIONS = 2048  # upstream sessions kept per process (least recently used dropped)
LEGACY_STATUSES = (400, 404, 405)  # a server/discover answered so: the upstream only initializes
PEER_TTL = 3600.0  # seconds a server/discover answer is trusted before it is asked again
PEER_RETRY = 60.0  # ... and a probe that failed (timeout, 5xx, garbage): initialize meanwhile
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}  # -> Mcp-Name
MAX_BODY = 16 * 1024 * 1024


class UpstreamError(Exception):
    """A failure talking to one upstream; ``str()`` is safe to show to the agent."""


class UpstreamRefused(UpstreamError):
    """The upstream answered 401 or 403: ``status`` and its ``WWW-Authenticate`` (``challenge``,
    None when absent), which an OAuth upstream uses to point at its authorization server or to
    say why the token failed (RFC 6750 ``error``, ``scope``)."""

    def __init__(self, message: str, status: int, challenge: str | None):
        super().__init__(message)
        self.status, self.challenge = status, challenge


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one upstream server for one credential."""

    server_id: int
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # The agent session that owns the upstream session, when it carries that agent's state
    # (subscriptions, log level): such sessions are never shared. None: pooled.
    owner: str | None = None

    @cached_property
    def session_key(self) -> tuple:
        # The credential is part of the key (hashed, so no secret sits in a dict key).
        digest = hashlib.sha256(json.dumps(self.headers).encode()).hexdigest()
        return self.server_id, self.url, digest, self.owner

    def owned_by(self, owner: str) -> "Endpoint":
        from dataclasses import replace

        return replace(self, owner=owner)

    def waiting(self, seconds: float) -> "Endpoint":
        """The same upstream session, read with a longer timeout (see PORTCULLIS_MCP_RELAY_WAIT_SECONDS)."""
        from dataclasses import replace

        return replace(self, read_timeout=seconds)

    @cached_property
    def timeout(self) -> dict:
        """httpx's per-request timeout extension."""
        return {"connect": self.connect_timeout, "read": self.read_timeout, "write": self.read_timeout,
                "pool": self.connect_timeout}


@dataclass
class Peer:
    """What ``server/discover`` told about one upstream: the 2026-07-28-era version it speaks
    (None: initialize only) and, when it does, its capabilities and server info."""

    modern: str | None
    capabilities: dict = field(default_factory=dict)
    server_info: dict = field(default_factory=dict)
    until: float = 0.0  # time.monotonic() until which the answer is trusted


@dataclass
class UpstreamSession:
    session_id: str | None
    protocol_version: str
    server_info: dict = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)  # the upstream's ServerCapabilities


Notify = Callable[[dict], None]


class UpstreamClient:
    def __init__(self, max_connections: int = 200):
        # The pooled transport itself, not an httpx.Client: no cookie jar (an upstream's cookie
        # must never ride along on another person's call), no redirects, no auth flows, no env
        # proxies; and less work per call.
        self.transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64,
                                keepalive_expiry=60))
        self._ids = itertools.count(1)
        self._sessions: OrderedDict[tuple, UpstreamSession] = OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._peers: dict[tuple, Peer] = {}
        self._guard = threading.Lock()
        # Where owned sessions (Endpoint.owner) are shared between workers and instances
        # (app/mcp/upstream_sessions.py): asked on a miss of the in-memory cache. None: memory only.
        self.owned = None

    def close(self) -> None:
        self.transport.close()

    def _send(self, ep: Endpoint, body: bytes, headers: dict) -> httpx.Response:
        """One POST; the answer's body is still to be read (streamed)."""
        request = httpx.Request("POST", ep.url, content=body, headers=headers, extensions={"timeout": ep.timeout})
        return self.transport.handle_request(request)

    # -- sessions ------------------------------------------------------------------------

    def session(self, ep: Endpoint) -> UpstreamSession:
        key = ep.session_key
        with self._guard:
            found = self._sessions.get(key)
            if found is not None:
                self._sessions.move_to_end(key)
                return found
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one initialize per key, however many threads ask at once
            with self._guard:
                found = self._sessions.get(key)
            if found is not None:
                return found
            found = self._owned_session(ep) if ep.owner and self.owned is not None else self._initialize(ep)
            with self._guard:
                self._sessions[key] = found
                while len(self._sessions) > MAX_SESSIONS:
                    old, _ = self._sessions.popitem(last=False)
                    self._locks.pop(old, None)
            return found

    def _owned_session(self, ep: Endpoint) -> UpstreamSession:
        """An owned endpoint's session: the stored one, else a new one stored (the first stored
        wins; a racing one of ours is ended)."""
        stored = self.owned.load(ep)
        if stored is not None:
            return UpstreamSession(*stored)
        fresh = self._initialize(ep)
        session_id, version = self.owned.save(ep, fresh.session_id, fresh.protocol_version)
        if session_id == fresh.session_id:
            return fresh
        self._delete(ep, fresh)
        return UpstreamSession(session_id, version)

    def _forget(self, ep: Endpoint, stale: UpstreamSession) -> None:
        with self._guard:
            if self._sessions.get(ep.session_key) is stale:
                del self._sessions[ep.session_key]
        if ep.owner and self.owned is not None:
            self.owned.forget(ep, stale.session_id)

    def _initialize(self, ep: Endpoint) -> UpstreamSession:
        params = types.InitializeRequestParams(
            protocol_version=LATEST_HANDSHAKE_VERSION,
            capabilities=RELAYED_CAPABILITIES,
            client_info=CLIENT_INFO,
        )
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "initialize",
                "params": params.model_dump(by_alias=True, exclude_none=True, mode="json")}
        call = self._open(ep, body, None)
        result = _result(ep, "initialize", call.result(), types.InitializeResult)
        session = UpstreamSession(call.session_id, result.protocol_version,
                                  result.server_info.model_dump(mode="json", exclude_none=True),
                                  result.capabilities.model_dump(mode="json", by_alias=True, exclude_none=True))
        self._notify(ep, session, "notifications/initialized")
        return session

    def _notify(self, ep: Endpoint, session: UpstreamSession, method: str, params: dict | None = None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._post_message(ep, session, message)

    def _post_message(self, ep: Endpoint, session: UpstreamSession | None, message: dict) -> None:
        """POST a notification or a response (the upstream answers 202, nothing to read)."""
        try:
            self._send(ep, json.dumps(message).encode(), self._headers(ep, session)).close()
        except httpx.HTTPError as e:
            raise UpstreamError(_transport_text(ep, e)) from None

    def notify(self, ep: Endpoint, method: str, params: dict | None = None) -> None:
        """Send a notification (e.g. notifications/cancelled) on the endpoint's session."""
        self._notify(ep, self.session(ep), method, params)

    def end(self, ep: Endpoint) -> None:
        """Forget the endpoint's session and end it upstream (DELETE), if there is one."""
        with self._guard:
            session = self._sessions.pop(ep.session_key, None)
            self._locks.pop(ep.session_key, None)
        if ep.owner and self.owned is not None:  # held in the database, maybe by another instance
            stored = self.owned.load(ep)
            session = UpstreamSession(*stored) if stored is not None else session
            if session is not None:
                self.owned.forget(ep, session.session_id)
        if session is None or not session.session_id:
            return
        self._delete(ep, session)

    def _delete(self, ep: Endpoint, session: UpstreamSession) -> None:
        request = httpx.Request("DELETE", ep.url, headers=self._headers(ep, session),
                                extensions={"timeout": ep.timeout})
        try:
            self.transport.handle_request(request).close()
        except httpx.HTTPError:
            pass

    # -- the protocol era of each upstream ------------------------------------------------------

    def peer(self, ep: Endpoint, fresh: bool = False) -> Peer:
        """The upstream's era, from one ``server/discover`` (cached per server and URL)."""
        key = (ep.server_id, ep.url)
        found = self._peers.get(key)
        if found is not None and not fresh and time.monotonic() < found.until:
            return found
        with self._guard:
            lock = self._locks.setdefault(("peer", key), threading.Lock())
        with lock:  # one probe at a time per upstream
            found = self._peers.get(key)
            if found is None or fresh or time.monotonic() >= found.until:
                found = self._probe(ep)
                self._peers[key] = found
        return found

    def _forget_peer(self, ep: Endpoint) -> None:
        self._peers.pop((ep.server_id, ep.url), None)

    def _probe(self, ep: Endpoint) -> Peer:
        """Only a valid DiscoverResult naming a 2026-07-28-era version is modern evidence: an
        error answer or HTTP 400/404/405 says initialize (cached PEER_TTL); a probe that fails
        otherwise (timeout, 5xx, garbage) says nothing (initialize meanwhile, asked again after
        PEER_RETRY). 401/403 is the credential's business: raised, as any request's."""
        now = time.monotonic()
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "server/discover",
                "params": {"_meta": _envelope(LATEST_MODERN_VERSION, {})}}
        headers = self._headers(ep, None)
        headers.update({"MCP-Protocol-Version": LATEST_MODERN_VERSION, "Mcp-Method": "server/discover"})
        legacy, unsure = Peer(None, until=now + PEER_TTL), Peer(None, until=now + PEER_RETRY)
        try:
            resp = self._send(ep, json.dumps(body).encode(), headers)
        except httpx.HTTPError:
            return unsure
        try:
            if resp.status_code in (401, 403):
                raise UpstreamRefused(f"{ep.name}: the server refused the credentials (HTTP {resp.status_code})",
                                      resp.status_code, resp.headers.get("www-authenticate"))
            if resp.status_code in LEGACY_STATUSES:
                return legacy
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if not 200 <= resp.status_code < 300 or ctype not in ("application/json", "text/event-stream"):
                return unsure
            call = UpstreamCall(self, ep, None, resp, body["id"], ctype == "text/event-stream")
            try:
                msg = call.result()
            except UpstreamError:
                return unsure
        finally:
            resp.close()
        result = msg.get("result")
        if not isinstance(result, dict):
            return legacy  # -32601 and any other error: initialize
        versions = result.get("supportedVersions")
        modern = [v for v in MODERN_PROTOCOL_VERSIONS if isinstance(versions, list) and v in versions]
        if not modern:
            return legacy
        caps = result.get("capabilities")
        meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
        info = meta.get(types.SERVER_INFO_META_KEY)
        return Peer(modern[-1], caps if isinstance(caps, dict) else {}, info if isinstance(info, dict) else {},
                    now + PEER_TTL)

    # -- requests --------------------------------------------------------------------------

    def open(self, ep: Endpoint, method: str, params: dict | None, envelope: "Envelope | None" = None) -> UpstreamCall:
        """Send one request; the answer is read from the returned call. Exactly one POST,
        unless the upstream had forgotten our session (then one re-initialize and a retry).

        With an ``envelope`` (the caller needs no session: no state, no server-to-client
        requests mid-call) and an upstream that speaks 2026-07-28, the request goes stateless
        (``call.modern``); otherwise over the initialized session."""
        if envelope is not None:
            peer = self.peer(ep)
            if peer.modern is not None:
                return self._open_modern(ep, peer.modern, method, params, envelope)
        session = self.session(ep)
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = params
        try:
            return self._open(ep, body, session)
        except _SessionExpired:
            self._forget(ep, session)
            return self._open(ep, body, self.session(ep))

    def _open_modern(self, ep: Endpoint, version: str, method: str, params: dict | None,
                     envelope: "Envelope") -> UpstreamCall:
        """One 2026-07-28 request: the envelope in ``_meta``, the routing headers, no session."""
        params = dict(params or {})
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        params["_meta"] = {**{k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")
                              or k == types.LOG_LEVEL_META_KEY},
                           **_envelope(version, envelope.capabilities)}
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        headers = dict(envelope.headers)  # first: nothing of the agent's replaces a header of ours
        headers.update(self._headers(ep, None))
        headers.update({"MCP-Protocol-Version": version, "Mcp-Method": method})
        name = params.get(NAME_PARAMS.get(method, ""))
        if isinstance(name, str):
            headers["Mcp-Name"] = _header_value(name)
        return self._open(ep, body, None, headers)

    def request(self, ep: Endpoint, method: str, params: dict | None,
                on_notification: Notify | None = None, envelope: "Envelope | None" = None) -> dict:
        """The upstream's JSON-RPC response message (with ``result`` or ``error``)."""
        return self.open(ep, method, params, envelope).result(on_notification)

    def discover(self, ep: Endpoint) -> tuple[list[dict], dict]:
        """The upstream's tools and the capabilities it announced (asking server/discover
        again: a refresh also learns a change of protocol era)."""
        peer = self.peer(ep, fresh=True)
        tools = self.list_tools(ep)
        return tools, peer.capabilities if peer.modern else self.session(ep).capabilities

    def list_tools(self, ep: Endpoint) -> list[dict]:
        """Every tool of the upstream (all pages), each checked against the SDK's Tool type."""
        tools, cursor, pages = [], None, 0
        while True:
            msg = self.request(ep, "tools/list", {"cursor": cursor} if cursor else None, envelope=PORTCULLIS)
            page = _result(ep, "tools/list", msg, types.ListToolsResult)
            tools.extend(msg["result"].get("tools", []))
            pages += 1
            cursor = page.next_cursor
            if not cursor or pages >= 50:
                return tools

    def _headers(self, ep: Endpoint, session: UpstreamSession | None) -> dict:
        headers = dict(ep.headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json, text/event-stream"
        if session is not None:
            headers["MCP-Protocol-Version"] = session.protocol_version
            if session.session_id:
                headers["Mcp-Session-Id"] = session.session_id
        return headers

    def _open(self, ep: Endpoint, body: dict, session: UpstreamSession | None,
              modern_headers: dict | None = None) -> UpstreamCall:
        modern = modern_headers is not None
        headers = modern_headers if modern else self._headers(ep, session)
        try:
            resp = self._send(ep, json.dumps(body).encode(), headers)
        except httpx.HTTPError as e:
            raise UpstreamError(_transport_text(ep, e)) from None
        try:
            if resp.status_code == 404 and session is not None and session.session_id:
                raise _SessionExpired()
            if resp.status_code in (401, 403):
                raise UpstreamRefused(f"{ep.name}: the server refused the credentials (HTTP {resp.status_code})",
                                      resp.status_code, resp.headers.get("www-authenticate"))
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            # 2026-07-28 answers its JSON-RPC errors with HTTP 400/404 and the error as JSON
            if not 200 <= resp.status_code < 300 and not (modern and resp.status_code in (400, 404)
                                                          and ctype == "application/json"):
                if modern and resp.status_code in LEGACY_STATUSES:
                    self._forget_peer(ep)  # no longer of 2026-07-28? the next call asks again
                raise UpstreamError(f"{ep.name}: the server answered HTTP {resp.status_code}")
            if ctype not in ("text/event-stream", "application/json"):
                raise UpstreamError(f"{ep.name}: sent an answer of type {ctype or 'unknown'!r}, not JSON or SSE")
        except BaseException:
            resp.close()
            raise
        call = UpstreamCall(self, ep, session, resp, body["id"], ctype == "text/event-stream")
        call.modern = modern
        return call

    def _refuse(self, ep: Endpoint, session, request_id, code: int = types.METHOD_NOT_FOUND,
                message: str = "not supported through Portcullis") -> None:
        """Answer a server-to-client request that cannot be relayed, so the upstream does not wait."""
        try:
            self._post_message(ep, session, {"jsonrpc": "2.0", "id": request_id,
                                             "error": {"code": code, "message": message}})
        except UpstreamError:
            pass

    def answer(self, ep: Endpoint, session_id: str | None, protocol_version: str, message: dict) -> None:
        """Deliver the agent's answer to a relayed server-to-client request, on the upstream
        session that asked (named by the relay, so any worker or instance can deliver it)."""
        self._post_message(ep, UpstreamSession(session_id, protocol_version), message)


class UpstreamCall:
    """One upstream answer being received: JSON (the answer) or SSE (notifications, then the
    answer). Read it once, with ``messages()`` or ``result()``; the connection goes back to
    the pool when it is done (or closed)."""

    modern = False  # a 2026-07-28 request: no session, results in that era's shape

    def __init__(self, client: UpstreamClient, ep: Endpoint, session, resp: httpx.Response, want_id, streaming: bool):
        self.client, self.ep, self.session, self.resp = client, ep, session, resp
        self.want_id, self.streaming = want_id, streaming

    @property
    def session_id(self) -> str | None:
        return self.resp.headers.get("mcp-session-id")

    def messages(self, relay: bool = False) -> Iterator[dict]:
        """Notifications (dicts with ``method``) as they arrive, then the answer. With ``relay``,
        the upstream's requests to the client (sampling, elicitation, roots) too, to be
        answered by the caller; without, they are refused at once."""
        ep = self.ep
        try:
            if not self.streaming:
                yield _parse_response(ep, read_capped(self.resp), self.want_id)
                return
            for data in _sse_data(sse_lines(self.resp.iter_bytes())):
                if not data:  # a priming event (an id for resumption, no message)
                    continue
                try:
                    msg = json.loads(data)
                except (ValueError, RecursionError):
                    raise UpstreamError(f"{ep.name}: sent an invalid event") from None
                if not isinstance(msg, dict):
                    continue
                if "method" in msg and "id" not in msg:  # a notification, e.g. progress
                    yield msg
                elif "method" in msg:  # a request to the client (sampling, elicitation, roots)
                    if relay:
                        yield msg
                    else:
                        self.client._refuse(ep, self.session, msg["id"])
                elif msg.get("id") == self.want_id:
                    if "result" not in msg and "error" not in msg:
                        raise UpstreamError(f"{ep.name}: sent an invalid answer")
                    yield msg
                    return
            raise UpstreamError(f"{ep.name}: closed the stream without an answer")
        except httpx.HTTPError as e:
            raise UpstreamError(_transport_text(ep, e)) from None
        except TooLarge:  # read no further than MAX_BODY
            raise UpstreamError(f"{ep.name}: the answer is too large") from None
        finally:
            self.resp.close()

    def result(self, on_notification: Notify | None = None) -> dict:
        for msg in self.messages():
            if "method" not in msg:
                return msg
            if on_notification is not None:
                on_notification(msg)
        raise UpstreamError(f"{self.ep.name}: no answer")  # not reached: messages() ends with one

    def close(self) -> None:
        self.resp.close()


class _SessionExpired(Exception):
    pass


@dataclass(frozen=True)
class Envelope:
    """What a stateless (2026-07-28) request declares upstream: the client capabilities of the
    agent behind it (it answers the upstream's input requests itself) and headers to pass
    through (``Mcp-Param-*``)."""

    capabilities: dict = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


PORTCULLIS = Envelope()  # Portcullis's own requests (discovery): no client capabilities


def _envelope(version: str, capabilities: dict) -> dict:
    return {types.PROTOCOL_VERSION_META_KEY: version,
            types.CLIENT_INFO_META_KEY: CLIENT_INFO.model_dump(mode="json", exclude_none=True),
            types.CLIENT_CAPABILITIES_META_KEY: capabilities}


def _header_value(value: str) -> str:
    """A value as the Mcp-Name header carries it: as it is when printable ASCII, else the
    spec's base64 form."""
    if value.isascii() and value.isprintable() and value == value.strip() and not value.startswith("=?base64?"):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


class TooLarge(Exception):
    """An upstream's answer, SSE line or event beyond the limit it was read with."""


def read_capped(resp: httpx.Response, limit: int | None = None) -> bytes:
    """The body, read no further than ``limit`` (default MAX_BODY) bytes (TooLarge beyond): an
    upstream cannot make Portcullis hold an endless answer."""
    limit = limit or MAX_BODY
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise TooLarge()
    return bytes(body)


def sse_lines(chunks: Iterator[bytes], limit: int | None = None) -> Iterator[str]:
    """The lines of an SSE body as they arrive (LF or CRLF), none buffered beyond ``limit``
    (default MAX_BODY) bytes (TooLarge beyond)."""
    limit = limit or MAX_BODY
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            yield line.rstrip(b"\r").decode("utf-8", "replace")
        if len(buf) > limit:
            raise TooLarge()
    if buf:
        yield bytes(buf).rstrip(b"\r").decode("utf-8", "replace")


def _sse_data(lines: Iterator[str], limit: int | None = None) -> Iterator[str]:
    """The data of each SSE event (text/event-stream framing, data lines joined by newlines)."""
    limit = limit or MAX_BODY
    data: list[str] = []
    size = 0
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data, size = [], 0
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if name == "data":
                size += len(value) + 1
                if size > limit:
                    raise TooLarge()
                data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _parse_response(ep: Endpoint, raw: bytes, want_id) -> dict:
    if len(raw) > MAX_BODY:
        raise UpstreamError(f"{ep.name}: the answer is too large")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise UpstreamError(f"{ep.name}: sent an answer that is not valid JSON") from None
    except RecursionError:
        raise UpstreamError(f"{ep.name}: sent an answer nested too deeply") from None
    if not isinstance(msg, dict) or msg.get("id") != want_id or ("result" not in msg and "error" not in msg):
        raise UpstreamError(f"{ep.name}: sent an invalid JSON-RPC answer")
    return msg


def _transport_text(ep: Endpoint, e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.ConnectTimeout):
        return f"{ep.name}: could not connect within {ep.connect_timeout:g}s"
    if isinstance(e, httpx.TimeoutException):
        return f"{ep.name}: no answer within {ep.read_timeout:g}s"
    if isinstance(e, httpx.ConnectError):
        return f"{ep.name}: the server is unreachable"
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return f"{ep.name}: the connection dropped before the answer was complete"
    return f"{ep.name}: transport error ({type(e).__name__})"


def _result(ep: Endpoint, method: str, msg: dict, model):
    """The ``result`` of an upstream's answer, checked against the SDK's type; an error answer
    or an invalid result is an ``UpstreamError`` naming the method."""
    if "error" in msg:
        raise UpstreamError(f"{ep.name}: {method} failed: {_error_text(msg['error'])}")
    try:
        return model.model_validate(msg.get("result"))
    except ValueError:
        raise UpstreamError(f"{ep.name}: sent an invalid {method} answer") from None


def _error_text(error) -> str:
    if isinstance(error, dict):
        return f"{error.get('message', 'error')} ({error.get('code')})"
    return "error"
