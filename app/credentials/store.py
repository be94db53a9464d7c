"""Stored per-binding credentials as the hot path reads them.

A binding's credential is read and decrypted once, then served from memory (with the upstream
endpoint built from it) until a commit in this process touches credentials or configuration,
or at the latest after PORTCULLIS_CONFIG_CACHE_SECONDS (edits made by another instance).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select

from .. import snapshot
from ..extensions import db
from ..models import Credential, UpstreamOAuth
from .bindings import Binding

MAX_CACHED = 50_000


@dataclass(frozen=True)
class StoredView:
    """What the hot path needs of one binding's credential (None values: no credential)."""
    credential_id: int | None
    status: str | None
    values: dict
    endpoint: object | None  # the upstream Endpoint with these values, when usable
    expires_at: object | None = None  # oauth: when the access token expires


_cache: dict[tuple, tuple[tuple, float, StoredView]] = {}
_lock = threading.Lock()
_generation = [0]


def invalidate() -> None:
    _generation[0] += 1


def _gen() -> tuple:
    return (snapshot._generation[0], _generation[0])


def headers_for(shared: dict, per_user_keys, values: dict) -> tuple[tuple[str, str], ...]:
    """The headers sent for one person: the shared ones, except any named like a per-user key
    (compared case-insensitively; per-user values always win), plus that person's values."""
    keys = {k.lower() for k in per_user_keys}
    out = {name: v for name, v in (shared or {}).items() if name.lower() not in keys}
    out.update(values)
    return tuple(sorted(out.items()))


def bearer(shared: dict, access_token: str) -> tuple[tuple[str, str], ...]:
    """The headers sent with an OAuth token: the shared ones, then Authorization (which wins)."""
    out = {name: v for name, v in (shared or {}).items() if name.lower() != "authorization"}
    out["Authorization"] = f"Bearer {access_token}"
    return tuple(sorted(out.items()))


def _cached(cache_key, load) -> StoredView:
    ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
    hit = _cache.get(cache_key)
    gen = _gen()
    if hit is not None and hit[0] == gen and time.monotonic() - hit[1] < ttl:
        return hit[2]
    view = load()
    with _lock:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[cache_key] = (gen, time.monotonic(), view)
    return view


def _oauth_view(server, row_id, status, token: dict | None, expires_at) -> StoredView:
    endpoint = None
    if status == "active" and token and token.get("access_token"):
        endpoint = server.endpoint(bearer(dict(server.headers), token["access_token"]))
    return StoredView(row_id, status, dict(token or {}), endpoint, expires_at)


def shared_oauth(server) -> StoredView:
    """An ``oauth`` server's shared token (``credential_id`` is the server id)."""
    def load():
        row = db.session.get(UpstreamOAuth, server.id)
        if row is None or row.token is None:
            return StoredView(None, None, {}, None)
        return _oauth_view(server, server.id, row.status, row.token, row.expires_at)
    return _cached(("shared", server.id), load)


def stored(server, binding: Binding) -> StoredView:
    """The binding's credential for ``server`` (a snapshot ServerView)."""
    return _cached((binding.auth_mode, binding.identity, binding.server_id), lambda: _load(server, binding))


def _load(server, binding: Binding) -> StoredView:
    row = db.session.scalar(select(Credential).where(*binding.where(Credential)))
    if row is None:
        view = StoredView(None, None, {}, None)
    elif row.auth_kind == "oauth":
        view = _oauth_view(server, row.id, row.status, row.values, row.expires_at)
    else:
        values = dict(row.values or {})
        required = server.per_user_header_keys
        endpoint = None
        if row.status == "active" and required and all(k in values for k in required):
            endpoint = server.endpoint(headers_for(dict(server.headers), required, {k: values[k] for k in required}))
        view = StoredView(row.id, row.status, values, endpoint)
    return view


snapshot.on_commit_touching((Credential, UpstreamOAuth), invalidate, "credentials")
