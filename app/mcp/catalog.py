"""Resources, prompts, completion and the log level, through the gateway.

On ``/mcp/<name>`` a request goes to that server as it is and its answer comes back as it is:
the upstream's own names, URIs and cursors. On the aggregated ``/mcp``:

- prompts are named ``<server>__<prompt>``, like tools;
- resource URIs and URI templates become ``portcullis://<server>/<upstream URI>``: the
  upstream's URI follows the server's name unchanged, so removing the prefix gives it back
  (server names are ``[a-z][a-z0-9-]*``, valid host names); contents, embedded resources and
  resource links in answers are renamed the same way;
- a list walks the servers in name order and returns what they answer, until one of them
  answers a further page: the cursor (``nextCursor``) is opaque, base64url of
  ``[server, upstream cursor]``, and stays valid as long as the server does.

Which servers: the caller's effective allowlist (a key's tool allowlist governs tools only;
resources and prompts of a granted server are visible) whose upstream announced the feature
at discovery. Anything else (an ungranted server's prompt or URI, a name of no server) is
answered exactly like a name that does not exist.
"""
from __future__ import annotations

import base64
import json
import logging

import mcp_types as types
from flask import current_app

from ..credentials import AuthRequired, CredentialUnavailable, SignInAgain, endpoint_for, wants_url_elicitation
from ..snapshot import ServerView
from ..upstream.client import UpstreamError
from .tools import SEP

log = logging.getLogger("portcullis.mcp")
URI_PREFIX = "portcullis://"
RESOURCE_NOT_FOUND = -32002  # the MCP spec's code for an unknown resource
MAX_CURSOR = 4096


class Failed(Exception):
    """The request could not reach the upstream; ``error`` is the JSON-RPC error to answer."""

    def __init__(self, error: dict):
        super().__init__(error.get("message"))
        self.error = error


# -- reaching one upstream ------------------------------------------------------------------

def endpoint(ex, server: ServerView):
    """The upstream endpoint for this caller; an agent session that holds upstream state
    (subscriptions, log level) has its own upstream session with that server. Raises
    SignInAgain (the caller's login ended) and Failed."""
    try:
        ep = endpoint_for(server, ex.caller.in_session(ex.session))
    except AuthRequired as e:
        if wants_url_elicitation(ex.session):
            raise Failed(e.rpc_error()) from None
        raise Failed({"code": types.INTERNAL_ERROR, "message": str(e),
                      "data": {"portcullis/auth_required": e.meta}}) from None
    except CredentialUnavailable as e:
        raise Failed({"code": types.INTERNAL_ERROR, "message": str(e)}) from None
    session = ex.session
    if session is not None and server.id in session.stateful:
        ep = ep.owned_by(session.id)
    return ep


def request(ex, server: ServerView, method: str, params: dict | None) -> dict:
    """The upstream's answer (a JSON-RPC message with ``result`` or ``error``)."""
    ep = endpoint(ex, server)
    try:  # a 2026-07-28 agent's request goes stateless to an upstream that speaks it
        return current_app.extensions["mcp_client"].request(ep, method, params, envelope=ex.upstream_envelope())
    except UpstreamError as e:
        raise Failed({"code": types.INTERNAL_ERROR, "message": str(e)}) from None


def granted(ex, feature: str) -> list[ServerView]:
    """The servers this request may reach for a feature, in name order."""
    if ex.scope is not None:
        return [ex.scope] if ex.scope.offers(feature) else []
    servers = ex.caller.snapshot.servers
    return sorted((servers[sid] for sid in ex.caller.allowlist if servers[sid].offers(feature)),
                  key=lambda s: s.name)


def _server(ex, name: str, feature: str) -> ServerView | None:
    server = ex.caller.snapshot.by_name.get(name)
    if server is None or server.id not in ex.caller.allowlist or not server.offers(feature):
        return None
    return server


# -- names and URIs on the aggregated endpoint ----------------------------------------------

def wrap_uri(server: ServerView, uri):
    return f"{URI_PREFIX}{server.name}/{uri}" if isinstance(uri, str) else uri


def unwrap_uri(ex, uri, feature: str = "resources") -> tuple[ServerView, str] | None:
    if not isinstance(uri, str) or not uri.startswith(URI_PREFIX):
        return None
    name, sep, upstream = uri[len(URI_PREFIX):].partition("/")
    server = _server(ex, name, feature) if sep and upstream else None
    return (server, upstream) if server is not None else None


def unwrap_name(ex, name, feature: str = "prompts") -> tuple[ServerView, str] | None:
    if not isinstance(name, str):
        return None
    server_name, sep, upstream = name.partition(SEP)
    server = _server(ex, server_name, feature) if sep and upstream else None
    return (server, upstream) if server is not None else None


def _wrap_content(server: ServerView, content):
    """A content block with its resource URIs under the server's prefix."""
    if not isinstance(content, dict):
        return content
    if content.get("type") == "resource_link":
        return {**content, "uri": wrap_uri(server, content.get("uri"))}
    if content.get("type") == "resource" and isinstance(content.get("resource"), dict):
        res = content["resource"]
        return {**content, "resource": {**res, "uri": wrap_uri(server, res.get("uri"))}}
    return content


# -- cursors --------------------------------------------------------------------------------

def _encode_cursor(server: str, upstream: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([server, upstream]).encode()).decode().rstrip("=")


def _decode_cursor(cursor) -> tuple[str, str] | None:
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        return None
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], str) and value[1]):
        return value[0], value[1]
    return None


# -- the methods ----------------------------------------------------------------------------

def _forward(ex, server: ServerView, method: str, params: dict, shape=None):
    """One upstream request; its answer under the agent's id, ``shape(result)`` applied."""
    try:
        msg = request(ex, server, method, params)
    except Failed as e:
        return ex.answer({"jsonrpc": "2.0", "id": ex.id, "error": e.error})
    msg["id"] = ex.id
    if shape is not None and isinstance(msg.get("result"), dict):
        msg["result"] = shape(msg["result"])
    return ex.answer(msg)


def _single(ex, feature: str, method: str, params: dict):
    """/mcp/<name>: the request as it is, if the upstream offers the feature."""
    if not ex.scope.offers(feature):
        return ex.error(types.METHOD_NOT_FOUND, f"method not found: {method} (the server offers no {feature})")
    return _forward(ex, ex.scope, method, params)


def _list(ex, feature: str, method: str, key: str, rename, params: dict):
    if ex.scope is not None:
        return _single(ex, feature, method, params)
    servers = granted(ex, feature)
    start, upstream_cursor = 0, None
    if params.get("cursor") is not None:
        decoded = _decode_cursor(params["cursor"])
        names = [s.name for s in servers]
        if decoded is None or decoded[0] not in names:
            return ex.error(types.INVALID_PARAMS, "invalid params: unknown cursor")
        start, upstream_cursor = names.index(decoded[0]), decoded[1]
    meta = params.get("_meta")
    items: list = []
    for server in servers[start:]:
        upstream_params = {}
        if upstream_cursor:
            upstream_params["cursor"] = upstream_cursor
        if meta is not None:
            upstream_params["_meta"] = meta
        upstream_cursor = None
        try:
            msg = request(ex, server, method, upstream_params or None)
        except Failed as e:  # one unreachable server does not hide the others
            log.info("%s on %s skipped: %s", method, server.name, e.error.get("message"))
            continue
        except SignInAgain:
            continue
        result = msg.get("result")
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            continue
        items.extend(rename(server, item) for item in result[key] if isinstance(item, dict))
        following = result.get("nextCursor")
        if isinstance(following, str) and following:
            return ex.result({key: items, "nextCursor": _encode_cursor(server.name, following)})
    return ex.result({key: items})


def list_resources(ex, params: dict):
    return _list(ex, "resources", "resources/list", "resources",
                 lambda s, r: {**r, "uri": wrap_uri(s, r.get("uri"))}, params)


def list_resource_templates(ex, params: dict):
    return _list(ex, "resources", "resources/templates/list", "resourceTemplates",
                 lambda s, t: {**t, "uriTemplate": wrap_uri(s, t.get("uriTemplate"))}, params)


def list_prompts(ex, params: dict):
    return _list(ex, "prompts", "prompts/list", "prompts",
                 lambda s, p: {**p, "name": s.name + SEP + str(p.get("name"))}, params)


def _by_uri(ex, method: str, params: dict, shape_for=None):
    uri = params.get("uri")
    if not isinstance(uri, str) or not uri:
        return ex.error(types.INVALID_PARAMS, "invalid params: uri must be a non-empty string")
    if ex.scope is not None:
        return _single(ex, "resources", method, params)
    found = unwrap_uri(ex, uri)
    if found is None:  # unknown, not granted, not a Portcullis URI: all look the same
        return ex.error(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:200]}")
    server, upstream_uri = found
    shape = shape_for(server) if shape_for else None
    return _forward(ex, server, method, {**params, "uri": upstream_uri}, shape)


def read_resource(ex, params: dict):
    def shape_for(server):
        def shape(result):
            contents = result.get("contents")
            if isinstance(contents, list):
                result["contents"] = [{**c, "uri": wrap_uri(server, c.get("uri"))} if isinstance(c, dict) else c
                                      for c in contents]
            return result
        return shape
    return _by_uri(ex, "resources/read", params, shape_for)


def subscribe(ex, params: dict, method: str):
    """resources/subscribe and /unsubscribe: the agent session gets its own upstream session
    with that server (a subscription is state of that agent session)."""
    if ex.session is None:
        return ex.error(types.INVALID_REQUEST, "subscriptions need a session; call initialize first")
    uri = params.get("uri")
    if not isinstance(uri, str) or not uri:
        return ex.error(types.INVALID_PARAMS, "invalid params: uri must be a non-empty string")
    found = (ex.scope, uri) if ex.scope is not None else unwrap_uri(ex, uri)
    if found is None or not found[0].offers("resources"):
        return ex.error(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:200]}")
    server, upstream_uri = found
    current_app.extensions["mcp_sessions"].hold_upstream(ex.session, server.id)
    return _forward(ex, server, method, {**params, "uri": upstream_uri})


def get_prompt(ex, params: dict):
    name = params.get("name")
    if not isinstance(name, str) or not name:
        return ex.error(types.INVALID_PARAMS, "invalid params: name must be a non-empty string")
    if ex.scope is not None:
        return _single(ex, "prompts", "prompts/get", params)
    found = unwrap_name(ex, name)
    if found is None:
        return ex.error(types.INVALID_PARAMS, f"Unknown prompt: {name[:200]}")
    server, prompt = found

    def shape(result):
        messages = result.get("messages")
        if isinstance(messages, list):
            result["messages"] = [{**m, "content": _wrap_content(server, m.get("content"))}
                                  if isinstance(m, dict) else m for m in messages]
        return result
    return _forward(ex, server, "prompts/get", {**params, "name": prompt}, shape)


def complete(ex, params: dict):
    ref = params.get("ref")
    if not isinstance(ref, dict) or ref.get("type") not in ("ref/prompt", "ref/resource"):
        return ex.error(types.INVALID_PARAMS, "invalid params: ref must be a ref/prompt or ref/resource")
    if ex.scope is not None:
        return _single(ex, "completions", "completion/complete", params)
    if ref["type"] == "ref/prompt":
        found = unwrap_name(ex, ref.get("name"), "completions")
        upstream_ref = {**ref, "name": found[1]} if found else None
    else:
        found = unwrap_uri(ex, ref.get("uri"), "completions")
        upstream_ref = {**ref, "uri": found[1]} if found else None
    if found is None:
        return ex.error(types.INVALID_PARAMS, "invalid params: unknown prompt or resource in ref")
    return _forward(ex, found[0], "completion/complete", {**params, "ref": upstream_ref})


def forward_log_level(ex, level: str) -> None:
    """logging/setLevel reaches every upstream of this request that offers logging, on upstream
    sessions of this agent session's own (a log level is state of that session). Failures are
    logged: the local filter still applies."""
    if ex.session is None:
        return
    store = current_app.extensions["mcp_sessions"]
    for server in granted(ex, "logging"):
        store.hold_upstream(ex.session, server.id)
        try:
            msg = request(ex, server, "logging/setLevel", {"level": level})
        except SignInAgain:
            continue
        except Failed as e:
            log.info("logging/setLevel on %s failed: %s", server.name, e.error.get("message"))
            continue
        if "error" in msg:
            log.info("logging/setLevel on %s refused: %s", server.name, (msg["error"] or {}).get("message"))


def advertised(scope: ServerView | None, servers, modern: bool = False) -> dict:
    """The capabilities to announce: tools and logging always (Portcullis filters log
    messages itself), resources, prompts and completions when an upstream offers them.
    ``modern`` (2026-07-28): change notifications ride subscriptions/listen (app/mcp/listen.py):
    the tool list's changes always (Portcullis's own list), the others and resource updates
    when an upstream announced it sends them."""
    caps = {"tools": {"listChanged": modern}, "logging": {}}
    offering = [scope] if scope is not None else list(servers)
    prompts = [s.capabilities["prompts"] for s in offering if s.offers("prompts")]
    if prompts:
        caps["prompts"] = {"listChanged": modern and any(p.get("listChanged") is True for p in prompts)}
    resources = [s.capabilities["resources"] for s in offering if s.offers("resources")]
    if resources:
        caps["resources"] = {"subscribe": any(r.get("subscribe") is True for r in resources),
                             "listChanged": modern and any(r.get("listChanged") is True for r in resources)}
    if any(s.offers("completions") for s in offering):
        caps["completions"] = {}
    return caps
