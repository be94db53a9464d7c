"""Server-to-client requests (sampling/createMessage, elicitation/create, roots/list) relayed
from an upstream, during a call, to the agent whose call it is, and the agent's answer back.

The upstream's request reaches the agent on the stream of the call that caused it, under a
relay id of Portcullis's own: ``portcullis-relay:`` + a Fernet token (the encryption key of
app/crypto.py) holding the agent session, the server, the upstream session and the upstream's
request id. The agent POSTs its answer with that id; whichever worker or instance receives it
reads the token, checks that the answer comes from the same agent session, and posts the answer
to that upstream session itself: nothing is kept in memory between the two, so the answer
arrives wherever the upstream request is held. The token is authenticated, so an agent can
answer only the requests relayed to its own session.

An agent that did not declare the capability a request needs (``sampling``, ``elicitation``
with the request's mode, ``roots``) never sees it: the upstream gets -32601 at once and the
call goes on. ``ping`` from an upstream is answered by Portcullis.

Progress: a relayed request that asks for progress gets a relay token as its ``progressToken``;
the agent's ``notifications/progress`` with it reaches the upstream (any worker, as answers do)
under the upstream's own token. Cancellation: ``notifications/cancelled`` from the agent for a
call in flight reaches the upstream under the upstream's request id (see ``calls``), from
whichever worker or instance receives it: a call this process does not hold is announced on the
cluster bus (app/cluster.py) by hashes of the agent session id and the request id only, and the
process holding it forwards it; the upstream's own cancellation of a relayed request reaches the
agent under the relay id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading

import mcp_types as types
from cryptography.fernet import InvalidToken
from flask import current_app

from .. import cluster
from ..crypto import keyring
from ..upstream.client import UpstreamError

log = logging.getLogger("portcullis.mcp")
PREFIX = "portcullis-relay:"
MAX_ID = 4096
TOKEN_TTL = 3600  # seconds an answer to a relayed request is accepted


def _missing(capabilities: dict, method: str, params) -> str | None:
    """Why this agent cannot take the request (None: it can)."""
    params = params if isinstance(params, dict) else {}
    if method == "sampling/createMessage":
        ok = isinstance(capabilities.get("sampling"), dict)
        need = "sampling"
    elif method == "elicitation/create":
        el = capabilities.get("elicitation")
        mode = params.get("mode") or "form"
        # an empty elicitation capability means form mode (MCP 2025-11-25)
        ok = isinstance(el, dict) and (mode in el or (mode == "form" and not el))
        need = f"elicitation ({mode} mode)"
    elif method == "roots/list":
        ok = isinstance(capabilities.get("roots"), dict)
        need = "roots"
    else:
        return f"{method[:60]} is not relayed by Portcullis"
    return None if ok else f"the agent did not declare the {need} capability"


def outgoing(ex, server, call, msg: dict) -> dict | None:
    """The upstream's request as the agent receives it, or None when it was answered here
    (refused, or a ping)."""
    client = current_app.extensions["mcp_client"]
    method = msg.get("method")
    if method == "ping":
        client._post_message(call.ep, call.session, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        return None
    if getattr(ex, "modern", None) is not None:  # no back-channel; its own requests use inputRequests
        reason = "the agent speaks MCP 2026-07-28, which takes no server-to-client requests during a call"
    elif ex.session is None:
        reason = "the agent's request cannot take a stream"
    else:
        reason = _missing(ex.session.capabilities or {}, method, msg.get("params"))
    if reason is not None:
        client._refuse(call.ep, call.session, msg["id"], types.METHOD_NOT_FOUND, reason)
        return None
    out = {**msg, "id": _seal(ex, server, call, i=msg["id"])}
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and "progressToken" in meta:  # the agent's progress goes back the same way
        out["params"] = {**params, "_meta": {**meta, "progressToken": _seal(ex, server, call, p=meta["progressToken"])}}
    return out


def _seal(ex, server, call, **data) -> str:
    """A relay id: where an answer (or progress) of this agent session goes upstream."""
    session = call.session
    data.update({"a": ex.session.id, "s": server.id, "u": session.session_id if session else None,
                 "v": session.protocol_version if session else None})
    return PREFIX + keyring().encrypt(json.dumps(data, separators=(",", ":")))


def _unseal(ex, relay_id):
    """The upstream server and the relay's data, when the relay id is this agent session's."""
    data = _open(relay_id) if is_relayed(relay_id) else None
    if data is None or ex.session is None or data.get("a") != ex.session.id:
        return None, None
    server = ex.caller.snapshot.servers.get(data.get("s"))
    if server is None or server.id not in ex.caller.allowlist:
        return None, None
    return server, data


def is_relayed(message_id) -> bool:
    return isinstance(message_id, str) and message_id.startswith(PREFIX) and len(message_id) <= MAX_ID


def _open(relay_id: str) -> dict | None:
    try:
        data = json.loads(keyring().fernet.decrypt(relay_id[len(PREFIX):].encode(), ttl=TOKEN_TTL))
    except (InvalidToken, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def deliver(ex, message: dict, endpoint_of) -> None:
    """The agent's answer (``message``: a JSON-RPC response with a relay id) to the upstream
    request it answers. Answers that are not the agent session's own are dropped."""
    server, data = _unseal(ex, message["id"])
    if server is None or "i" not in data:
        return
    answer = {"jsonrpc": "2.0", "id": data["i"]}
    if isinstance(message.get("error"), dict):
        answer["error"] = message["error"]
    elif isinstance(message.get("result"), dict):
        answer["result"] = message["result"]
    else:
        answer["error"] = {"code": types.INTERNAL_ERROR, "message": "the agent sent an invalid answer"}
    _post(ex, server, data, answer, endpoint_of)


def progress(ex, params: dict, endpoint_of) -> None:
    """The agent's notifications/progress for a relayed request that asked for progress: to
    the upstream, under the upstream's own progress token."""
    server, data = _unseal(ex, params.get("progressToken"))
    if server is None or "p" not in data:
        return
    _post(ex, server, data, {"jsonrpc": "2.0", "method": "notifications/progress",
                             "params": {**params, "progressToken": data["p"]}}, endpoint_of)


def _post(ex, server, data: dict, message: dict, endpoint_of) -> None:
    try:
        ep = endpoint_of(ex, server)
        current_app.extensions["mcp_client"].answer(ep, data.get("u"), data.get("v") or "2025-11-25", message)
    except UpstreamError as e:
        log.info("a relayed message could not reach %s: %s", server.name, e)
    except Exception as e:  # noqa: BLE001 - credentials gone meanwhile (Failed, SignInAgain): dropped
        log.info("a relayed message for %s was dropped: %s", server.name, type(e).__name__)


# -- calls in flight (this process): cancellation from the agent ------------------------------

def _digest(session_id: str, request_id) -> str:
    """A call's name on the bus: hashes of the agent session id and of its request id."""
    return (hashlib.sha256(session_id.encode()).hexdigest()[:32] + "."
            + hashlib.sha256(json.dumps(request_id).encode()).hexdigest()[:32])


class Calls:
    """(agent session, agent request id), hashed -> the upstream call serving it."""

    def __init__(self):
        self._calls: dict[str, object] = {}
        self._lock = threading.Lock()

    def add(self, session_id: str, request_id, call) -> None:
        with self._lock:
            self._calls[_digest(session_id, request_id)] = call

    def remove(self, session_id: str, request_id) -> None:
        with self._lock:
            self._calls.pop(_digest(session_id, request_id), None)

    def cancel(self, session_id: str, params: dict) -> None:
        """notifications/cancelled from the agent: forwarded under the upstream's request id,
        here or by the process that holds the call."""
        digest = _digest(session_id, params.get("requestId"))
        if not self._forward(digest, params.get("reason")):
            cluster.send("cancel", digest)

    def cancel_announced(self, digest: str) -> None:
        """Another process received the cancellation (on the bus's listener thread: the POST
        upstream runs on a thread of its own)."""
        if len(digest) == 65 and digest in self._calls:
            threading.Thread(target=self._forward, args=(digest, None), daemon=True, name="relay-cancel").start()

    def _forward(self, digest: str, reason) -> bool:
        with self._lock:
            call = self._calls.get(digest)
        if call is None:
            return False
        forwarded = {"requestId": call.want_id}
        if isinstance(reason, str):
            forwarded["reason"] = reason[:500]
        try:
            call.client._post_message(call.ep, call.session, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                              "params": forwarded})
        except UpstreamError as e:
            log.info("a cancellation could not reach %s: %s", call.ep.name, e)
        return True


calls = Calls()
cluster.on_message("cancel", calls.cancel_announced)
