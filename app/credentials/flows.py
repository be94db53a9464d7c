"""Flows: the pending step that creates a binding's credential. Starting or refreshing one,
its link, who may use it, its form, the submission, and revoking a credential.

One pending flow per binding (a partial unique index), 15 minutes. ``user`` flows are used by
that person's dashboard login or API token; ``vk``/``session`` flows by a temp token that
travels only in the link's fragment (#t=...) and is stored hashed.

The same rules serve the page (/connect/<flow_id>) and the JSON API (/api/v1/header-flows).
A header submission is verified at the upstream (initialize + tools/list) with exactly the
values that will be stored; only then is the credential upserted on its binding (status
active) and the flow marked used (its token gone). Values are never trimmed, changed, logged
or echoed.
"""
from __future__ import annotations

import hmac
import re
import secrets

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import metrics
from ..audit import record
from ..extensions import db
from ..models import Credential, Flow, McpServer, User, VirtualKey
from ..models.base import digest, iso, utcnow
from ..models.credentials import FLOW_TTL
from ..ops.errors import BadRequest, Forbidden, NotFound, OpError  # noqa: F401 (used by the API)
from ..ops.fields import HEADER_NAME_RE, HEADER_VALUE_RULE, header_value_ok, valid_id
from ..upstream.client import UpstreamError
from ..upstream.discovery import list_tools
from .bindings import Binding
from .store import headers_for

TOKEN_HEADER = "X-Portcullis-Flow-Token"
FLOW_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # flow ids are url-safe random tokens; nothing else is looked up
FLOW_ID_BYTES = 24
TOKEN_BYTES = 32


def start(binding: Binding, kind: str = "headers", oauth: dict | None = None) -> tuple[str, str | None]:
    """Start or refresh the binding's one pending flow: (flow id, temp token or None for user
    flows). A refresh extends the expiry; for vk/session flows it issues a new temp token (only
    its hash is kept, so the previous link stops working). ``oauth``: what an OAuth flow keeps
    (encrypted) from the start, e.g. that it connects a server's shared account."""
    for _ in range(3):
        now = utcnow()
        token = secrets.token_urlsafe(TOKEN_BYTES) if binding.auth_mode != "user" else None
        flow = db.session.scalar(select(Flow).where(*binding.where(Flow), Flow.status == "pending")
                                 .with_for_update())
        if flow is not None and flow.expired(now):
            db.session.delete(flow)
            db.session.flush()
            flow = None
        started = flow is None
        if flow is None:
            flow = Flow(id=secrets.token_urlsafe(FLOW_ID_BYTES), kind=kind, auth_mode=binding.auth_mode,
                        mcp_server_id=binding.server_id, status="pending", **{binding.column: binding.identity})
            db.session.add(flow)
        if flow.kind != kind:  # the server changed its auth type since: the flow follows
            flow.kind = kind
        if kind == "oauth":
            flow.oauth = dict(oauth or {})  # a fresh start: any earlier state and verifier are void
        flow.expires_at = now + FLOW_TTL
        flow.token_hash = None if token is None else digest(token)
        try:
            db.session.commit()
        except IntegrityError:  # another request created the binding's flow at the same moment
            db.session.rollback()
            continue
        if started:
            metrics.FLOWS_STARTED.labels(kind).inc()
        return flow.id, token
    raise RuntimeError("could not start a submission flow")


def link(flow_id: str, token: str | None) -> str:
    """The page a person opens for a flow: ``{PORTCULLIS_BASE_URL}/connect/<flow_id>``, with
    the temp token in the fragment for vk/session flows."""
    base = current_app.config["PORTCULLIS_BASE_URL"]
    return f"{base}/connect/{flow_id}" + (f"#t={token}" if token else "")


class Gone(OpError):
    status, code = 410, "gone"


class Rejected(OpError):
    """The upstream refused the submitted values (nothing stored)."""
    status, code = 422, "upstream_rejected"


def get_flow(flow_id: str) -> Flow:
    flow = db.session.get(Flow, flow_id) if isinstance(flow_id, str) and FLOW_ID_RE.fullmatch(flow_id) else None
    if flow is None:
        raise NotFound("no such flow")
    return flow


def authorize(flow: Flow, user, token: str | None) -> None:
    """user flows: the binding's user only. vk/session flows: the flow's temp token."""
    if flow.auth_mode == "user":
        if user is None or user.id != flow.user_id:
            raise Forbidden("this link belongs to another user")
        return
    if not token or flow.token_hash is None or not hmac.compare_digest(digest(token), flow.token_hash):
        if flow.status == "pending" and not flow.expired():
            raise Forbidden("this link's token is missing or wrong; open the full link you were given")


def check_open(flow: Flow) -> None:
    if flow.status != "pending":
        raise Gone("this link was used already; ask your agent for a new one if needed")
    if flow.expired():
        raise Gone("this link has expired; retry the call in your agent to get a new one")


def _credential(flow: Flow) -> Credential | None:
    return db.session.scalar(select(Credential).where(*Binding.of(flow).where(Credential)))


def form(flow: Flow) -> dict:
    """What the person is asked for (names only, never a value)."""
    server = db.session.get(McpServer, flow.mcp_server_id)
    cred = _credential(flow)
    required = list(server.per_user_header_keys or [])
    stored = sorted(k for k in (cred.header_keys if cred else []) if k in required)
    if flow.kind == "oauth":
        required, stored = [], []
    if flow.kind == "oauth" and (flow.oauth or {}).get("shared"):
        reason = "the server's shared account is to be connected"
    elif cred is None:
        reason = "no credentials are stored for you yet"
    elif cred.status == "needs_reauth":
        reason = "the upstream no longer accepts the stored authorization"
    elif cred.status == "needs_update":
        reason = "the server's required headers changed"
    else:
        reason = "a required header is missing or the stored credential is not usable"
    return {"id": flow.id, "kind": flow.kind, "auth_mode": flow.auth_mode,
            "server": {"id": server.id, "name": server.name}, **_whose(flow),
            "reason": reason, "required_header_keys": required, "stored_header_keys": stored,
            "missing_header_keys": [k for k in required if k not in stored],
            "expires_at": iso(flow.expires_at)}


def _person(user_id) -> dict | None:
    user = db.session.get(User, user_id) if user_id is not None else None
    return {"id": user.id, "email": user.email} if user is not None else None


def _whose(flow: Flow) -> dict:
    """Whose credential the values become, shown before anything is typed: a forwarded vk or
    session link must not trick a person into attaching their secret to someone else's key.
    ``user``: that person; ``virtual_key``: the key with its owner (or null); both null for a
    session flow (an anonymous development session)."""
    key = db.session.get(VirtualKey, flow.virtual_key_id) if flow.virtual_key_id is not None else None
    return {"user": _person(flow.user_id),
            "virtual_key": None if key is None else {"id": key.id, "name": key.name,
                                                      "owner": _person(key.owner_id)}}


def _clean(headers, required: list[str]) -> dict:
    if not isinstance(headers, dict):
        raise BadRequest("headers must be an object of header name to value", {"headers": "must be an object"})
    out = {}
    for name, value in headers.items():
        key = name.strip().lower() if isinstance(name, str) else ""
        if not HEADER_NAME_RE.match(key):
            raise BadRequest("invalid header name", {"headers": f"{key[:64]!r} is not a valid header name"})
        if key not in required:
            raise BadRequest("not a header of this server", {"headers": f"{key} is not asked for by this server"})
        if key in out:
            raise BadRequest("duplicate header", {"headers": f"{key} appears more than once"})
        if value is None or value == "":
            continue  # left blank: keep the stored value, if any
        if not header_value_ok(value):
            raise BadRequest(f"invalid value of {key}", {"headers": f"the value of {key} {HEADER_VALUE_RULE}"})
        out[key] = value
    return out


def submit(flow: Flow, headers) -> Credential:
    """Verify and store; raises BadRequest (missing keys), Gone, Rejected (upstream said no)."""
    check_open(flow)
    server = db.session.get(McpServer, flow.mcp_server_id)
    required = list(server.per_user_header_keys or [])
    given = _clean(headers, required)
    cred = _credential(flow)
    kept = {k: v for k, v in ((cred.values or {}) if cred else {}).items() if k in required and k not in given}
    values = {**kept, **given}
    absent = [k for k in required if k not in values]
    if absent:
        raise BadRequest("missing header values: " + ", ".join(absent), {"headers": "missing: " + ", ".join(absent)})
    flow_id, binding = flow.id, Binding.of(flow)
    db.session.rollback()  # no transaction (or lock) held while the upstream is contacted
    server = db.session.get(McpServer, binding.server_id)
    try:
        list_tools(server, headers_for(server.shared_headers, server.per_user_header_keys or (), values))
    except UpstreamError as e:
        raise Rejected(f"the upstream refused these values: {e}", {"headers": f"refused by the upstream: {e}"}) \
            from None
    return store(flow_id, binding, values)


def store(flow_id: str, binding: Binding, values: dict, auth_kind: str = "headers", expires_at=None,
          scopes: list | None = None) -> Credential:
    """Upsert the binding's credential (status active) and mark the flow used, in one
    transaction; Gone when the flow is no longer open."""
    mode, col, identity, server_id = binding.auth_mode, binding.column, binding.identity, binding.server_id
    for _ in range(3):
        flow = db.session.scalar(select(Flow).where(Flow.id == flow_id).with_for_update())
        if flow is None:
            raise Gone("this link is no longer valid")
        check_open(flow)
        cred = db.session.scalar(select(Credential).where(*binding.where(Credential)).with_for_update())
        now = utcnow()
        if cred is None:
            cred = Credential(auth_mode=mode, mcp_server_id=server_id, auth_kind=auth_kind, **{col: identity})
            db.session.add(cred)
        cred.auth_kind = auth_kind
        cred.values = dict(values)
        cred.header_keys = sorted(values) if auth_kind == "headers" else []
        cred.expires_at, cred.scopes, cred.refresh_lease_until = expires_at, scopes, None
        if cred.status != "active":
            cred.status, cred.status_changed_at = "active", now
        cred.updated_at = now
        flow.status, flow.token_hash, flow.oauth = "used", None, None
        kind = flow.kind
        what = f"headers={','.join(sorted(values))}" if auth_kind == "headers" else f"oauth scopes={' '.join(scopes or [])}"
        try:
            db.session.flush()
            record("credential.store", cred, f"{mode} binding, server {server_id}, {what}",
                   target_name=f"{mode}:{identity}:{server_id}")
            db.session.commit()
            metrics.FLOWS_COMPLETED.labels(kind).inc()
            return cred
        except IntegrityError:  # a concurrent submission inserted the row first: update it
            db.session.rollback()
    raise Gone("this link is no longer valid")


def get_credential(credential_id) -> Credential:
    cred = db.session.get(Credential, credential_id) if valid_id(credential_id) else None
    if cred is None:
        raise NotFound("no such credential")
    return cred


def may_revoke(cred: Credential, user, token: str | None) -> bool:
    if user is not None and (user.is_admin or (cred.auth_mode == "user" and cred.user_id == user.id)):
        return True
    if token and cred.auth_mode != "user":
        flow = db.session.scalar(select(Flow).where(*Binding.of(cred).where(Flow), Flow.token_hash == digest(token),
                                                    Flow.status == "pending"))
        return flow is not None and not flow.expired()
    return False


def revoke(cred: Credential, action: str = "credential.revoke", detail: str | None = None) -> None:
    """Deletes the binding's pending flows first, then the credential (audited as ``action``)."""
    for flow in db.session.scalars(select(Flow).where(*Binding.of(cred).where(Flow))):
        db.session.delete(flow)
    db.session.flush()
    record(action, cred, detail or f"{cred.auth_mode} binding, server {cred.mcp_server_id}",
           target_name=f"{cred.auth_mode}:{cred.identity}:{cred.mcp_server_id}")
    db.session.delete(cred)
    db.session.commit()
