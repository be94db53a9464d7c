"""The per_user_headers resolver: the caller's binding -> that binding's stored header values.

Hot path: a binding's credential is read and decrypted once, then served from memory (with the
endpoint built from it) until a commit in this process touches credentials or configuration,
or at the latest after PORTCULLIS_CONFIG_CACHE_SECONDS (edits made by another instance).
When the binding has no usable credential (none, ``needs_update``, a required key missing) the
call does not reach the upstream: the binding's one pending submission flow is started or
refreshed and ``AuthRequired`` describes what the agent must show its person.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import snapshot
from ..extensions import db
from ..models import Credential, Flow
from ..models.base import digest, utcnow
from ..models.credentials import FLOW_TTL, IDENTITY_COLUMN

MAX_CACHED = 50_000
FLOW_ID_BYTES = 24
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Binding:
    auth_mode: str  # user | vk | session
    identity: int | str
    server_id: int

    @property
    def column(self) -> str:
        return IDENTITY_COLUMN[self.auth_mode]


@dataclass(frozen=True)
class StoredView:
    """What the hot path needs of one binding's credential (None values: no credential)."""
    credential_id: int | None
    status: str | None
    values: dict
    endpoint: object | None  # the Endpoint with these values, when usable


_cache: dict[tuple, tuple[tuple, float, StoredView]] = {}
_lock = threading.Lock()
_generation = [0]


def invalidate() -> None:
    _generation[0] += 1


def _gen() -> tuple:
    return (snapshot._generation[0], _generation[0])


def binding_for(server_id: int, caller, session) -> Binding | None:
    """user (the key has an owner), vk (a key without owner), session (anonymous development mode)."""
    key = caller.key
    if key is not None:
        if key.owner_id is not None:
            return Binding("user", key.owner_id, server_id)
        return Binding("vk", key.id, server_id)
    if session is None:
        return None
    return Binding("session", session.id, server_id)


def stored(server, binding: Binding) -> StoredView:
    cache_key = (binding.auth_mode, binding.identity, binding.server_id)
    ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
    hit = _cache.get(cache_key)
    gen = _gen()
    if hit is not None and hit[0] == gen and time.monotonic() - hit[1] < ttl:
        return hit[2]
    row = db.session.scalar(select(Credential).where(
        Credential.auth_mode == binding.auth_mode, getattr(Credential, binding.column) == binding.identity,
        Credential.mcp_server_id == binding.server_id))
    if row is None:
        view = StoredView(None, None, {}, None)
    else:
        values = dict(row.values or {})
        required = server.per_user_header_keys
        endpoint = None
        if row.status == "active" and required and all(k in values for k in required):
            from ..mcp.discovery import upstream_headers

            endpoint = server.endpoint(upstream_headers(dict(server.headers), required,
                                                        {k: values[k] for k in required}))
        view = StoredView(row.id, row.status, values, endpoint)
    with _lock:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[cache_key] = (gen, time.monotonic(), view)
    return view


def start_flow(binding: Binding) -> tuple[str, str | None]:
    """Start or refresh the binding's one pending flow: (flow id, temp token or None for user
    flows). A refresh extends the expiry; for vk/session flows it issues a new temp token (only
    its hash is kept, so the previous link stops working)."""
    for _ in range(3):
        now = utcnow()
        token = secrets.token_urlsafe(TOKEN_BYTES) if binding.auth_mode != "user" else None
        flow = db.session.scalar(select(Flow).where(
            Flow.auth_mode == binding.auth_mode, getattr(Flow, binding.column) == binding.identity,
            Flow.mcp_server_id == binding.server_id, Flow.status == "pending").with_for_update())
        if flow is not None and flow.expired(now):
            db.session.delete(flow)
            db.session.flush()
            flow = None
        if flow is None:
            flow = Flow(id=secrets.token_urlsafe(FLOW_ID_BYTES), kind="headers", auth_mode=binding.auth_mode,
                        mcp_server_id=binding.server_id, status="pending", **{binding.column: binding.identity})
            db.session.add(flow)
        flow.expires_at = now + FLOW_TTL
        flow.token_hash = None if token is None else digest(token)
        try:
            db.session.commit()
        except IntegrityError:  # another request created the binding's flow at the same moment
            db.session.rollback()
            continue
        return flow.id, token
    raise RuntimeError("could not start a submission flow")


def submit_url(flow_id: str, token: str | None) -> str:
    base = current_app.config["PORTCULLIS_BASE_URL"]
    return f"{base}/connect/{flow_id}" + (f"#t={token}" if token else "")


snapshot.on_commit_touching((Credential,), invalidate, "credentials")
