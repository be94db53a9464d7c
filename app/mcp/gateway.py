"""The /mcp endpoint (MCP Streamable HTTP): one JSON-RPC message per POST.

A request flows one way: origin check -> JSON-RPC envelope -> caller (virtual key) ->
session -> method -> (tools/call) allowlist -> credentials -> upstream -> answer.

It is served by ``app.mcp.wsgi`` in an app context, with the plain werkzeug request passed in
(see there why it skips Flask's request machinery).
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import mcp_types as types
from flask import current_app
from werkzeug.wrappers import Request, Response

from ..credentials import (DISCOVERABLE, AuthRequired, CredentialUnavailable, SignInAgain, endpoint_for, resolver,
                           wants_url_elicitation)
from ..oauth_server import metadata as oauth_metadata
from ..extensions import db
from .. import identity, metrics
from ..identity import Caller
from ..ops.fields import JsonRefused, parse_json
from . import catalog, listen, modern, native, parked, relay, streams
from . import tools as toolnames
from ..upstream.client import Envelope, UpstreamError, UpstreamRefused
from ..upstream.discovery import refresh_now, refresh_stale
from .sessions import McpSessionInfo

SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")  # through initialize
LATEST_VERSION = SUPPORTED_VERSIONS[0]
ALL_VERSIONS = (*modern.VERSIONS, *SUPPORTED_VERSIONS)  # 2026-07-28: stateless (app/mcp/modern.py)
SESSION_NOT_FOUND = -32001
UNAUTHORIZED = -32000
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- answers ------------------------------------------------------------------------------

def _dumps(payload) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _json(payload, status: int = 200, headers: dict | None = None) -> Response:
    return Response(_dumps(payload), status=status, mimetype="application/json", headers=headers)


def rpc_error(req_id, code: int, message: str, status: int = 200, headers: dict | None = None) -> Response:
    return _json({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}, status, headers)


def _sse_event(message: dict) -> str:
    return "event: message\ndata: " + _dumps(message) + "\n\n"


def tool_error(text: str) -> dict:
    result = types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)
    return result.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"result_type"})


class Exchange:
    """One request and what its answer must look like. ``modern``: the envelope of a
    2026-07-28 request (no session), whose answers take that revision's shape."""

    def __init__(self, req: Request, req_id, caller: Caller, scope, session: McpSessionInfo | None,
                 envelope: modern.Envelope | None = None, method: str | None = None):
        self.req, self.id, self.caller, self.scope, self.session = req, req_id, caller, scope, session
        self.modern, self.method = envelope, method
        accept = req.headers.get("Accept", "")
        self.takes_sse = "text/event-stream" in accept
        self.sse_only = self.takes_sse and "application/json" not in accept

    @property
    def server_info(self) -> dict:
        return {"name": f"portcullis{'/' + self.scope.name if self.scope else ''}", "version": "1.0"}

    def final(self, message: dict) -> dict:
        """The answer as the agent's protocol revision shapes it."""
        if self.modern is not None and isinstance(message.get("result"), dict):
            return {**message, "result": modern.shape(self.method, message["result"], self.server_info)}
        return message

    def upstream_envelope(self) -> Envelope | None:
        """For a 2026-07-28 agent: what a stateless upstream request declares for it (its own
        capabilities, its Mcp-Param-* headers). None: over the upstream session."""
        if self.modern is None:
            return None
        return Envelope(self.modern.capabilities, tuple((k, v) for k, v in self.req.headers.items()
                                                        if k.lower().startswith("mcp-param-")))

    def answer(self, message: dict, headers: dict | None = None) -> Response:
        """JSON, unless the client accepts only SSE."""
        message = self.final(message)
        if self.sse_only:
            return Response(_sse_event(message), mimetype="text/event-stream", headers=headers)
        status = modern.status(message.get("error")) if self.modern is not None else 200
        return _json(message, status, headers=headers)

    def result(self, result: dict, headers: dict | None = None) -> Response:
        return self.answer({"jsonrpc": "2.0", "id": self.id, "result": result}, headers)

    def error(self, code: int, message: str) -> Response:
        return self.answer({"jsonrpc": "2.0", "id": self.id, "error": {"code": code, "message": message}})


# -- checks -------------------------------------------------------------------------------

def _origin_allowed(origin: str) -> bool:
    """DNS-rebinding protection: the public base URL's origin, or a loopback origin."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host in LOOPBACK:
        return True
    base = urlsplit(current_app.config["PORTCULLIS_BASE_URL"])
    return (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower())


def _valid_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _release_db() -> None:
    """Give back the database connection, if this request took one (most calls never do)."""
    if db.session.registry.has():
        db.session.close()


# -- the endpoint -------------------------------------------------------------------------

def handle(req: Request, server_name: str | None) -> Response:
    origin = req.headers.get("Origin")
    if origin is not None and not _origin_allowed(origin):
        return rpc_error(None, types.INVALID_REQUEST, "origin not allowed", 403)
    if req.method not in ("POST", "DELETE", "GET"):
        return rpc_error(None, types.INVALID_REQUEST, f"method {req.method[:10]} not allowed; use GET, POST or DELETE",
                         405, {"Allow": "GET, POST, DELETE"})

    message = None
    if req.method == "POST":
        try:
            message = parse_json(req.get_data())
        except JsonRefused as e:
            return rpc_error(None, types.PARSE_ERROR, f"parse error: the body is {e}", 400)
    req_id = message.get("id") if isinstance(message, dict) and _valid_id(message.get("id")) else None

    try:
        caller = identity.resolve(req.environ, "mcp", server_name)
    except identity.Refusal as e:
        return _refused(req_id, e, server_name)

    scope = None
    if server_name is not None:
        scope = caller.snapshot.by_name.get(server_name)
        if scope is None or scope.id not in caller.allowlist:
            return rpc_error(req_id, types.INVALID_REQUEST, "no such MCP server", 404)

    store = current_app.extensions["mcp_sessions"]
    if req.method == "DELETE":
        session = _session(req, store, caller, scope)
        if not isinstance(session, McpSessionInfo):
            return session
        store.end(session)
        streams.wake(session.id)  # its streams end, here and on other instances
        _end_upstreams(Exchange(req, None, caller, scope, session))
        return Response(status=204)
    if req.method == "GET":  # the server-to-client stream (app/mcp/streams.py)
        session = _session(req, store, caller, scope)
        if not isinstance(session, McpSessionInfo):
            return session
        return streams.open_stream(Exchange(req, None, caller, scope, session), req.headers.get("Last-Event-ID"))

    # -- the JSON-RPC envelope --
    if isinstance(message, list):
        return rpc_error(None, types.INVALID_REQUEST, "JSON-RPC batches are not supported", 400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return rpc_error(req_id, types.INVALID_REQUEST, "invalid request: expected a JSON-RPC 2.0 object", 400)
    method = message.get("method")
    if method is None:
        if "id" in message and ("result" in message or "error" in message):
            if relay.is_relayed(message["id"]):  # the agent's answer to a relayed upstream request
                session = _session(req, store, caller, scope)
                if isinstance(session, Response):
                    return session
                _release_db()
                relay.deliver(Exchange(req, None, caller, scope, session), message, _endpoint_or_fail)
            return Response(status=202)  # answers to anything else: accepted, ignored
        return rpc_error(req_id, types.INVALID_REQUEST, "invalid request: method is missing", 400)
    if not isinstance(method, str):
        return rpc_error(req_id, types.INVALID_REQUEST, "invalid request: method must be a string", 400)
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        return rpc_error(req_id, types.INVALID_PARAMS, "invalid params: params must be an object")
    if modern.wanted(req.headers, message):
        return _modern(req, message, caller, scope)

    if "id" not in message:
        if method.startswith("notifications/"):
            session = _session(req, store, caller, scope, required=False)
            if isinstance(session, Response):
                return session
            if method == "notifications/cancelled" and session is not None and params:
                relay.calls.cancel(session.id, params)  # forwarded to the upstream call it names
            elif method == "notifications/progress" and session is not None and params:
                _release_db()
                relay.progress(Exchange(req, None, caller, scope, session), params, _endpoint_or_fail)
            return Response(status=202)
        return rpc_error(None, types.INVALID_REQUEST, f"invalid request: {method} needs an id", 400)
    if not _valid_id(message["id"]):
        return rpc_error(None, types.INVALID_REQUEST, "invalid request: id must be a string or an integer", 400)
    if method not in METHODS:
        return rpc_error(req_id, types.METHOD_NOT_FOUND, f"method not found: {method}")
    if method == "initialize":
        return _initialize(Exchange(req, req_id, caller, scope, None), params or {}, store)

    version = req.headers.get("MCP-Protocol-Version")
    if version is not None and version not in SUPPORTED_VERSIONS:
        return rpc_error(req_id, types.INVALID_REQUEST, f"unsupported MCP-Protocol-Version: {version[:40]}", 400)
    session = _session(req, store, caller, scope, required=method != "ping")
    if isinstance(session, Response):
        return session
    ex = Exchange(req, req_id, caller, scope, session)
    if method == "logging/setLevel":
        return _set_log_level(ex, params or {}, store)
    _release_db()  # nothing below reads the database: free the connection during the upstream call
    try:
        return METHODS[method](ex, params or {})
    except SignInAgain as e:  # the session gate (see _call_tool), for the other forwarded methods
        return _refused(ex.id, identity.Refusal(401, "invalid_token", str(e)), ex.scope.name if ex.scope else None)


def _modern(req: Request, message: dict, caller: Caller, scope) -> Response:
    """A 2026-07-28 request: stateless, its envelope in _meta (app/mcp/modern.py)."""
    method, req_id = message["method"], message.get("id")
    if "id" not in message:  # 2026-07-28 cancels by closing the stream: notifications are dropped
        return Response(status=202)
    if not _valid_id(req_id):
        return rpc_error(None, types.INVALID_REQUEST, "invalid request: id must be a string or an integer", 400)
    try:
        envelope = modern.envelope(req.headers, message, LOG_LEVELS, ALL_VERSIONS)
    except modern.Rejected as e:
        return _json({"jsonrpc": "2.0", "id": req_id, "error": e.error()}, modern.status(e.error()))
    if method not in modern.METHODS:
        return rpc_error(req_id, types.METHOD_NOT_FOUND, f"method not found: {method[:100]}", 404)
    ex = Exchange(req, req_id, caller, scope, None, envelope, method)
    params = modern.strip_envelope(message.get("params") or {})
    if method == "server/discover":
        return _discover(ex)
    if method == "subscriptions/listen":
        return listen.open_listen(ex, params)
    _release_db()
    try:
        return METHODS[method](ex, params)
    except SignInAgain as e:
        return _refused(ex.id, identity.Refusal(401, "invalid_token", str(e)), ex.scope.name if ex.scope else None)


def _discover(ex: Exchange) -> Response:
    servers = ex.caller.snapshot.servers
    return ex.result({
        "supportedVersions": list(ALL_VERSIONS),
        "capabilities": catalog.advertised(ex.scope, (servers[sid] for sid in ex.caller.allowlist), modern=True),
        **({} if ex.scope else {"instructions": INSTRUCTIONS}),
    })


# On /mcp an unknown, a revoked and an expired key look the same from outside.
HIDDEN_REFUSALS = {"invalid_key": "invalid virtual key", "key_revoked": "invalid virtual key",
                   "key_expired": "invalid virtual key"}


def _refused(req_id, refusal: identity.Refusal, server_name: str | None) -> Response:
    """401 (403 for a token without the mcp scope), with a challenge that points an OAuth
    client at this endpoint's protected resource metadata (RFC 9728), unless the
    authorization server is off."""
    message = HIDDEN_REFUSALS.get(refusal.code, refusal.message)
    if current_app.config["PORTCULLIS_MCP_AUTH"] == "keys":
        challenge = 'Bearer realm="portcullis"'
    else:
        error = refusal.code if refusal.code in ("invalid_token", "insufficient_scope", "invalid_request") else None
        challenge = oauth_metadata.challenge(server_name, error, message if error else None)
    return rpc_error(req_id, UNAUTHORIZED, f"unauthorized: {message}", refusal.status,
                     {"WWW-Authenticate": challenge})


def _session(req: Request, store, caller: Caller, scope, required: bool = True):
    sid = req.headers.get("Mcp-Session-Id")
    if sid is None:
        if not required:
            return None
        return rpc_error(None, types.INVALID_REQUEST, "missing Mcp-Session-Id header; call initialize first", 400)
    info = store.get(sid)
    if info is None or info.principal != caller.principal or info.server_id != (scope.id if scope else None):
        return rpc_error(None, SESSION_NOT_FOUND, "session not found; initialize a new one", 404)
    return info


# -- methods ------------------------------------------------------------------------------

def _initialize(ex: Exchange, params: dict, store) -> Response:
    try:
        init = types.InitializeRequestParams.model_validate(params)
    except ValueError as e:
        return ex.error(types.INVALID_PARAMS, "invalid params: " + _first_error(e))
    version = init.protocol_version if init.protocol_version in SUPPORTED_VERSIONS else LATEST_VERSION
    scope = ex.scope
    session = store.create(ex.caller, scope.id if scope else None, version,
                           init.client_info.model_dump(mode="json", exclude_none=True),
                           init.capabilities.model_dump(mode="json", by_alias=True, exclude_none=True))
    servers = ex.caller.snapshot.servers
    result = types.InitializeResult(
        protocol_version=version,
        capabilities=types.ServerCapabilities.model_validate(
            catalog.advertised(scope, (servers[sid] for sid in ex.caller.allowlist))),
        server_info=types.Implementation(name=f"portcullis{'/' + scope.name if scope else ''}", version="1.0"),
        instructions=None if scope else INSTRUCTIONS,
    )
    body = result.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"result_type"})
    return ex.result(body, {"Mcp-Session-Id": session.id})


INSTRUCTIONS = "Tools of every MCP server granted to this key, named <server>__<tool>."


def _set_log_level(ex: Exchange, params: dict, store) -> Response:
    level = params.get("level")
    if level not in LOG_LEVELS:
        return ex.error(types.INVALID_PARAMS, "invalid params: level must be one of " + ", ".join(LOG_LEVELS))
    if ex.session is not None:
        store.set_log_level(ex.session, level)
    _release_db()
    catalog.forward_log_level(ex, level)
    return ex.result({})


def _endpoint_or_fail(ex: Exchange, server):
    return catalog.endpoint(ex, server)


def _end_upstreams(ex: Exchange) -> None:
    """The upstream sessions this agent session held of its own end with it."""
    client = current_app.extensions["mcp_client"]
    for server_id in sorted(ex.session.stateful):
        server = ex.caller.snapshot.servers.get(server_id)
        if server is None:
            continue
        try:
            client.end(catalog.endpoint(ex, server))
        except (catalog.Failed, SignInAgain):
            pass


def _ping(ex: Exchange, params: dict) -> Response:
    return ex.result({})


def _list_tools(ex: Exchange, params: dict) -> Response:
    servers = ex.caller.snapshot.servers
    refresh_stale(s for sid in ex.caller.allowlist if (s := servers[sid]).auth_type in DISCOVERABLE
                  and (ex.scope is None or s.id == ex.scope.id))
    tools = toolnames.visible(ex.caller, ex.scope)
    if ex.scope is None:
        tools += native.tools(ex.caller)  # portcullis__*: see app/mcp/native.py
    return ex.result({"tools": tools})


def _call_tool(ex: Exchange, params: dict) -> Response:
    name, arguments, meta = params.get("name"), params.get("arguments"), params.get("_meta")
    if not isinstance(name, str) or not name:
        return ex.error(types.INVALID_PARAMS, "invalid params: name must be a non-empty string")
    if arguments is not None and not isinstance(arguments, dict):
        return ex.error(types.INVALID_PARAMS, "invalid params: arguments must be an object")
    if meta is not None and not isinstance(meta, dict):
        return ex.error(types.INVALID_PARAMS, "invalid params: _meta must be an object")
    if ex.scope is None and native.is_native(name):
        result = native.call(ex.caller, name, arguments or {})
        metrics.tool_call("portcullis" if result else "", name if result else "", _outcome(result))
        return ex.error(types.INVALID_PARAMS, f"Unknown tool: {name}") if result is None else ex.result(result)
    found = toolnames.resolve(ex.caller, ex.scope, name)
    if found is None:  # unknown, not granted and filtered out look the same
        metrics.tool_call("", "", "unknown_tool")
        return ex.error(types.INVALID_PARAMS, f"Unknown tool: {name}")
    server, tool = found
    if ex.modern is not None and parked.is_parked(params.get("requestState")):
        return parked.resume(ex, server, tool, params)  # the retry of a parked call (app/mcp/parked.py)
    caller = ex.caller.in_session(ex.session)
    upstream_params = dict(params)
    upstream_params["name"] = tool
    asked_auth = ex.modern is not None and _answered_auth(upstream_params)
    envelope = ex.upstream_envelope()
    try:
        endpoint = endpoint_for(server, caller)
        owner = ex.session.id if ex.session is not None and server.id in ex.session.stateful else None
        if owner is not None:
            endpoint = endpoint.owned_by(owner)  # this session's own upstream session
        if _answers_requests(ex.session or ex.modern):
            endpoint = _waiting(endpoint)
        try:
            call = current_app.extensions["mcp_client"].open(endpoint, "tools/call", upstream_params, envelope)
        except UpstreamRefused as e:
            # an OAuth upstream refused the token: once more with a newer or refreshed one (401),
            # or a new consent for wider scope (403 insufficient_scope: AuthRequired)
            retry = resolver(server.auth_type).after_refused(server, caller, endpoint, e.status, e.challenge)
            if retry is None:
                raise
            if owner is not None:
                retry = retry.owned_by(owner)
            if _answers_requests(ex.session or ex.modern):
                retry = _waiting(retry)
            call = current_app.extensions["mcp_client"].open(retry, "tools/call", upstream_params, envelope)
    except SignInAgain as e:  # the session gate: no new flow for a token whose login ended
        metrics.tool_call(server.name, tool, "auth_required")
        return _refused(ex.id, identity.Refusal(401, "invalid_token", str(e)),
                        ex.scope.name if ex.scope else None)
    except AuthRequired as e:  # the call does not reach the upstream
        metrics.tool_call(server.name, tool, "auth_required")
        metrics.AUTH_REQUIRED.labels(server.name).inc()
        if ex.modern is not None:  # -32042 is gone in 2026-07-28: a URL elicitation as input request
            if wants_url_elicitation(ex.modern) and not asked_auth:
                return ex.result(_auth_input_required(e))
            return ex.result(e.tool_result())
        if wants_url_elicitation(ex.session):
            return ex.answer({"jsonrpc": "2.0", "id": ex.id, "error": e.rpc_error()})
        return ex.result(e.tool_result())
    except CredentialUnavailable as e:
        metrics.tool_call(server.name, tool, "credential_unavailable")
        return ex.result(tool_error(str(e)))
    except UpstreamError as e:
        _upstream_failed(server.name, tool)
        return ex.result(tool_error(str(e)))
    if ex.session is not None:
        relay.calls.add(ex.session.id, ex.id, call)  # the agent may cancel it meanwhile
    if call.streaming and ex.takes_sse:
        session = ex.session
        if ex.modern is not None:  # 2026-07-28: log messages only when the request asked (_meta logLevel)
            floor = LOG_LEVELS.index(ex.modern.log_level) if ex.modern.log_level else len(LOG_LEVELS)
        else:
            floor = LOG_LEVELS.index(session.log_level) if session is not None and session.log_level else 0
        return Response(_relay(current_app._get_current_object(), call, ex, server, tool, floor),
                        mimetype="text/event-stream", headers=SSE_HEADERS)
    try:
        msg = call.result()
    except UpstreamError as e:
        _upstream_failed(server.name, tool)
        return ex.result(tool_error(str(e)))
    finally:
        if ex.session is not None:
            relay.calls.remove(ex.session.id, ex.id)
    metrics.tool_call(server.name, tool, _outcome(msg.get("result"), msg.get("error")))
    msg["id"] = ex.id
    return ex.answer(msg)


AUTH_INPUT = "portcullis/auth"  # the key of Portcullis's own input request (2026-07-28)


def _answered_auth(params: dict) -> bool:
    """Did this retry answer Portcullis's own URL elicitation? (It is taken out of the params:
    the upstream never asked it.) Asked once per call, so an unfinished sign-in ends the
    round trips with the auth-required tool result instead of asking forever."""
    responses = params.get("inputResponses")
    if not isinstance(responses, dict) or AUTH_INPUT not in responses:
        return False
    rest = {k: v for k, v in responses.items() if k != AUTH_INPUT}
    if rest:
        params["inputResponses"] = rest
    else:
        params.pop("inputResponses")
    return True


def _auth_input_required(e: AuthRequired) -> dict:
    """The auth-required answer for a 2026-07-28 agent with URL-mode elicitation: an input
    request sending its user to the URL; the agent's retry finds the credential."""
    error = e.rpc_error()["data"]["elicitations"][0]
    return {"resultType": "input_required", "inputRequests": {AUTH_INPUT: {
        "method": "elicitation/create", "params": error}}, "_meta": {"portcullis/auth_required": e.meta}}


def _answers_requests(session) -> bool:
    """Can this agent session answer an upstream's requests during a call (it declared sampling,
    elicitation or roots)? Its calls then wait for it rather than for the upstream's read timeout."""
    caps = getattr(session, "capabilities", None) or {}
    return any(isinstance(caps.get(c), dict) for c in ("sampling", "elicitation", "roots"))


def _waiting(endpoint):
    """The endpoint read with PORTCULLIS_MCP_RELAY_WAIT_SECONDS when that is longer than the
    server's read timeout: a relayed request waits for a person, not for the upstream."""
    wait = current_app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"]
    return endpoint.waiting(wait) if wait > endpoint.read_timeout else endpoint


def _outcome(result, error=None) -> str:
    if error is not None:
        return "rpc_error"
    if not isinstance(result, dict):
        return "unknown_tool"
    return "tool_error" if result.get("isError") else "ok"


def _upstream_failed(server: str, tool: str) -> None:
    metrics.tool_call(server, tool, "upstream_error")
    metrics.UPSTREAM_ERRORS.labels("mcp", server).inc()


LIST_CHANGED = {"notifications/tools/list_changed", "notifications/prompts/list_changed",
                "notifications/resources/list_changed"}


def _relay(app, call, ex: Exchange, server, tool: str, log_floor: int):
    """The upstream's SSE answer, event by event: progress notifications, log messages (at
    or above the session's logging/setLevel), list_changed notifications and the upstream's
    requests to the client (app/mcp/relay.py) as they arrive, then the answer under the agent's
    own request id. It runs after the request's app context is gone: one is entered around
    what needs it, never across a yield."""
    relayed = {}  # upstream request id -> relay id, for the upstream's cancellations
    parks = ex.modern is not None and not call.modern  # 2026-07-28 agent, initialize-era upstream
    handed = False  # the call is parked: a thread of app/mcp/parked.py reads on
    messages = call.messages(relay=ex.session is not None or ex.modern is not None)
    try:
        for msg in messages:
            method = msg.get("method")
            if method is not None and "id" in msg and parks:
                with app.app_context():
                    out = parked.park(app, ex, server, tool, call, msg, messages)
                if out is not None:
                    handed = True
                    yield _sse_event(ex.final(out))
                    return
                continue
            if method is not None and "id" in msg:
                with app.app_context():
                    out = relay.outgoing(ex, server, call, msg)
                if out is not None:
                    relayed[json.dumps(msg["id"])] = out["id"]
                    yield _sse_event(out)
                continue
            if method == "notifications/progress":
                yield _sse_event(msg)
                continue
            if method == "notifications/message":
                level = (msg.get("params") or {}).get("level")
                if level in LOG_LEVELS and LOG_LEVELS.index(level) >= log_floor:
                    yield _sse_event(msg)
                continue
            if method in LIST_CHANGED:
                if method == "notifications/tools/list_changed":
                    with app.app_context():
                        refresh_now(server.id)  # the stored list follows
                yield _sse_event({"jsonrpc": "2.0", "method": method})
                continue
            if method == "notifications/resources/updated":  # on a session of this agent's own (subscribe)
                params = msg.get("params") or {}
                if ex.scope is None:
                    params = {**params, "uri": catalog.wrap_uri(server, params.get("uri"))}
                yield _sse_event({"jsonrpc": "2.0", "method": method, "params": params})
                continue
            if method == "notifications/cancelled":
                params = msg.get("params") or {}
                relay_id = relayed.get(json.dumps(params.get("requestId")))
                if relay_id is not None:
                    yield _sse_event({**msg, "params": {**params, "requestId": relay_id}})
                continue
            if method is not None:
                continue
            msg["id"] = ex.id
            metrics.tool_call(server.name, tool, _outcome(msg.get("result"), msg.get("error")))
            yield _sse_event(ex.final(msg))
    except UpstreamError as e:
        _upstream_failed(server.name, tool)
        yield _sse_event(ex.final({"jsonrpc": "2.0", "id": ex.id, "result": tool_error(str(e))}))
    finally:
        if ex.session is not None:
            relay.calls.remove(ex.session.id, ex.id)
        if not handed:
            call.close()


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    return "invalid"


METHODS = {
    "initialize": _initialize,  # handled before the session check
    "logging/setLevel": _set_log_level,  # needs the session store
    "ping": _ping,
    "tools/list": _list_tools,
    "tools/call": _call_tool,
    "resources/list": catalog.list_resources,
    "resources/templates/list": catalog.list_resource_templates,
    "resources/read": catalog.read_resource,
    "resources/subscribe": lambda ex, params: catalog.subscribe(ex, params, "resources/subscribe"),
    "resources/unsubscribe": lambda ex, params: catalog.subscribe(ex, params, "resources/unsubscribe"),
    "prompts/list": catalog.list_prompts,
    "prompts/get": catalog.get_prompt,
    "completion/complete": catalog.complete,
}
