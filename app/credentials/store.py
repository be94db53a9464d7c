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
from ..models import Credential
from .bindings import Binding

MAX_CACHED = 50_000


@dataclass(frozen=True)
class StoredView:
    """What the hot path needs of one binding's credential (None values: no credential)."""
    credential_id: int | None
    status: str | None
    values: dict
    endpoint: object | None  # the upstream Endpoint with these values, when usable


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


def stored(server, binding: Binding) -> StoredView:
    """The binding's header credential for ``server`` (a snapshot ServerView)."""
    cache_key = (binding.auth_mode, binding.identity, binding.server_id)
    ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
    hit = _cache.get(cache_key)
    gen = _gen()
    if hit is not None and hit[0] == gen and time.monotonic() - hit[1] < ttl:
        return hit[2]
    row = db.session.scalar(select(Credential).where(*binding.where(Credential)))
    if row is None:
        view = StoredView(None, None, {}, None)
    else:
        values = dict(row.values or {})
        required = server.per_user_header_keys
        endpoint = None
        if row.status == "active" and required and all(k in values for k in required):
            endpoint = server.endpoint(headers_for(dict(server.headers), required, {k: values[k] for k in required}))
        view = StoredView(row.id, row.status, values, endpoint)
    with _lock:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[cache_key] = (gen, time.monotonic(), view)
    return view


snapshot.on_commit_touching((Credential,), invalidate, "credentials")
