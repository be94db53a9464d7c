"""Server-to-client requests of an initialize-era upstream, during a call of a 2026-07-28 agent.

A 2026-07-28 agent has no back-channel during a call: a server asks it by answering the call
with ``resultType: "input_required"`` (``inputRequests``, ``requestState``), and the agent
retries the same request with ``inputResponses`` and the echoed ``requestState``. An upstream
of the initialize era asks with a JSON-RPC request (``elicitation/create``,
``sampling/createMessage``, ``roots/list``) on the call's SSE stream and waits for the answer
on its session. Portcullis maps one onto the other:

- the upstream's request (one the agent declared the capability for in its envelope; others
  get -32601 at once, ``ping`` is answered here) ends the agent's POST with ``input_required``:
  the request under a key of Portcullis's own, and a ``requestState`` that is a Fernet token
  (the keyring of app/crypto.py) naming the agent (principal, endpoint scope), the tool, the
  server, the upstream session and the upstream's request ids, the round, and the parked
  call's id (random, 32 bytes). Authenticated; valid PORTCULLIS_MCP_RELAY_WAIT_SECONDS.
- the upstream call stays open ("parked") on a thread of the process that holds it (``_hold``),
  which writes each outcome (the final answer, or the upstream's next request) to the event log
  of app/mcp/streams.py under the parked call's id (encrypted rows, bus wake-ups), as round
  n + 1 of the call. The log needs an ``mcp_sessions`` row: the parked call gets one, ended at
  birth, so it can never serve as an ``Mcp-Session-Id``.
- the agent's retry may reach any worker or instance: it opens the token, checks it is this
  caller's and this tool's, POSTs the answers to the upstream session (as relay.deliver does)
  and waits for round n + 1 in the log: the final result, or another ``input_required``.

The parked call ends with its upstream read (the relay wait, see _waiting in gateway.py);
a retry after that, or with a token that is not Portcullis's or not this caller's, gets -32602.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time

import mcp_types as types
from cryptography.fernet import InvalidToken
from flask import current_app
from sqlalchemy import delete

from .. import cluster, metrics
from ..credentials import AuthRequired, CredentialUnavailable, endpoint_for
from ..crypto import keyring
from ..extensions import db
from ..models import McpSession, McpSessionEvent
from ..models.base import utcnow
from ..upstream.client import UpstreamError
from . import relay, streams

log = logging.getLogger("portcullis.mcp")
PREFIX = "portcullis-parked:"
MAX_STATE = 8192
ASKS = ("sampling", "elicitation", "roots")


def can_ask(capabilities) -> bool:
    """Did the agent declare anything an upstream could ask it mid-call?"""
    caps = capabilities or {}
    return any(isinstance(caps.get(c), dict) for c in ASKS)


def is_parked(request_state) -> bool:
    return isinstance(request_state, str) and request_state.startswith(PREFIX)


def _wanted(client, call, capabilities: dict, msg: dict) -> bool:
    """Is this upstream request one for the agent? (A ping is answered here, one the agent
    cannot take refused at once, so the upstream never waits for nothing.)"""
    method = msg.get("method")
    if method == "ping":
        try:
            client._post_message(call.ep, call.session, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        except UpstreamError:
            pass
        return False
    reason = relay._missing(capabilities, method, msg.get("params"))
    if reason is not None:
        client._refuse(call.ep, call.session, msg["id"], types.METHOD_NOT_FOUND, reason)
        return False
    return True


def park(app, ex, server, tool: str, call, msg: dict, messages) -> dict | None:
    """The upstream's first request of this call (``msg``) as the agent's answer (a JSON-RPC
    message with the input_required result); the rest of ``messages`` is read by a thread of
    its own from now on. None: the request was answered here; the call goes on as before."""
    client = app.extensions["mcp_client"]
    caps = ex.modern.capabilities
    if not _wanted(client, call, caps, msg):
        return None
    park_id = secrets.token_hex(32)
    db.session.add(McpSession(id=park_id, virtual_key_id=ex.caller.key_id, principal=ex.caller.principal,
                              server_id=ex.scope.id if ex.scope else None, protocol_version="2026-07-28",
                              client_info={}, capabilities={}, ended_at=utcnow()))
    db.session.commit()
    session = call.session
    base = {"k": park_id, "c": ex.caller.principal, "x": ex.scope.id if ex.scope else None, "s": server.id,
            "t": tool, "u": session.session_id if session else None,
            "v": session.protocol_version if session else None}
    threading.Thread(target=_hold, args=(app, park_id, caps, call, messages), daemon=True,
                     name="portcullis-parked").start()
    return {"jsonrpc": "2.0", "id": ex.id, "result": _input_required(base, 1, [msg])}


def _input_required(base: dict, round_: int, requests: list[dict]) -> dict:
    asked = {f"portcullis/input-{round_}.{i}": m for i, m in enumerate(requests)}
    state = {**base, "n": round_, "r": {key: m["id"] for key, m in asked.items()}}
    return {"resultType": "input_required",
            "inputRequests": {key: {"method": m["method"], "params": m.get("params") or {}} for key, m in asked.items()},
            "requestState": PREFIX + keyring().encrypt(json.dumps(state, separators=(",", ":")))}


def _hold(app, park_id: str, caps: dict, call, messages) -> None:
    """The parked call: each outcome of the upstream goes to the log as the next round."""
    from .gateway import tool_error

    round_ = 1

    def outcome(payload: dict) -> None:
        nonlocal round_
        round_ += 1
        with app.app_context():
            streams.publish(park_id, {"round": round_, **payload})

    try:
        try:
            for msg in messages:
                method = msg.get("method")
                if method is not None and "id" in msg:
                    if _wanted(call.client, call, caps, msg):
                        outcome({"requests": [msg]})
                    continue
                if method is not None:  # progress, log messages: nobody hears them between rounds
                    continue
                outcome({"final": msg})
                return
        except UpstreamError as e:
            outcome({"final": {"jsonrpc": "2.0", "result": tool_error(str(e))}})
    except Exception as e:  # noqa: BLE001 - the database gone meanwhile: the retry times out
        log.warning("a parked call could not report its outcome: %s", type(e).__name__)
    finally:
        call.close()


def _open(request_state: str) -> dict | None:
    if len(request_state) > MAX_STATE:
        return None
    ttl = max(1, int(current_app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"]))  # as long as the call waits
    try:
        data = json.loads(keyring().fernet.decrypt(request_state[len(PREFIX):].encode(), ttl=ttl))
    except (InvalidToken, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("r"), dict) else None


def resume(ex, server, tool: str, params: dict):
    """The agent's retry of a parked call: its answers to the upstream, then the next outcome."""
    from .gateway import _outcome, tool_error

    state = _open(params["requestState"])
    if state is None:
        return ex.error(types.INVALID_PARAMS, "invalid params: requestState is not valid or has expired; "
                        "call the tool again without it")
    if state.get("c") != ex.caller.principal or state.get("x") != (ex.scope.id if ex.scope else None):
        return ex.error(types.INVALID_PARAMS, "invalid params: requestState was issued to another caller")
    if state.get("s") != server.id or state.get("t") != tool:
        return ex.error(types.INVALID_PARAMS, "invalid params: requestState belongs to another request")
    try:
        ep = endpoint_for(server, ex.caller)
    except (AuthRequired, CredentialUnavailable) as e:
        return ex.result(tool_error(str(e)))
    responses = params.get("inputResponses") if isinstance(params.get("inputResponses"), dict) else {}
    park_id, want = state["k"], state["n"] + 1
    client = current_app.extensions["mcp_client"]
    streams.hub.enter(park_id)
    try:
        for key, upstream_id in state["r"].items():
            answer = responses.get(key)
            message = {"jsonrpc": "2.0", "id": upstream_id}
            if isinstance(answer, dict):
                message["result"] = answer
            else:
                message["error"] = {"code": types.INVALID_PARAMS, "message": "the agent sent no answer"}
            try:
                client.answer(ep, state.get("u"), state.get("v") or "2025-11-25", message)
            except UpstreamError as e:
                log.info("an answer to a parked call could not reach %s: %s", server.name, e)
        found = _wait(park_id, want)
    finally:
        streams.hub.leave(park_id)
    if found is None:
        return ex.error(types.INVALID_PARAMS, "invalid params: the call this requestState names has ended; "
                        "call the tool again without it")
    if "requests" in found:
        base = {k: v for k, v in state.items() if k not in ("n", "r")}
        return ex.result(_input_required(base, want, found["requests"]))
    _forget(park_id)
    message = {**found["final"], "id": ex.id}
    metrics.tool_call(server.name, tool, _outcome(message.get("result"), message.get("error")))
    return ex.answer(message)


def _wait(park_id: str, want: int) -> dict | None:
    """Round ``want`` of the parked call, from the log (here or written by another process)."""
    deadline = time.monotonic() + float(current_app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"])
    step = 10.0 if cluster._bus[0] is not None else streams.POLL_SECONDS
    while True:
        seen = streams.hub.counter(park_id)
        try:
            if db.session.get(McpSession, park_id) is None:
                return None  # over (its final answer was taken) or never parked
            rows = streams._after(park_id, 0)
        finally:
            db.session.close()  # no connection held while waiting
        for _, payload in rows:
            if isinstance(payload, dict) and payload.get("round") == want:
                return payload
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        streams.hub.wait(park_id, seen, min(left, step))


def _forget(park_id: str) -> None:
    """The parked call is over: its log and row go."""
    db.session.execute(delete(McpSessionEvent).where(McpSessionEvent.session_id == park_id))
    db.session.execute(delete(McpSession).where(McpSession.id == park_id))
    db.session.commit()
