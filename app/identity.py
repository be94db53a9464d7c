"""Who is calling /mcp (and later the proxy route): a virtual key, or in development mode an
anonymous session-bound caller. Resolved from the in-memory snapshot, not the database."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from . import snapshot
from .models.base import digest, utcnow
from .models.keys import KEY_PREFIX
from .snapshot import Allowlist, KeyView, Snapshot


class Unauthenticated(Exception):
    """No usable credential; the message is safe to send."""


@dataclass(frozen=True)
class Caller:
    key: KeyView | None  # None: anonymous (PORTCULLIS_ENFORCE_AUTH=false)
    allowlist: Allowlist
    snapshot: Snapshot

    @property
    def key_id(self) -> int | None:
        return None if self.key is None else self.key.id


def presented_key(headers) -> str | None:
    """The virtual key from ``Authorization: Bearer vk_...`` or ``X-Virtual-Key``."""
    header = headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
        raise Unauthenticated("unsupported Authorization scheme")
    token = headers.get("X-Virtual-Key", "").strip()
    return token or None


def resolve_caller(headers) -> Caller:
    token = presented_key(headers)
    snap = snapshot.current()
    if token is None:
        if current_app.config["PORTCULLIS_ENFORCE_AUTH"]:
            raise Unauthenticated("a virtual key is required")
        return Caller(None, snap.allowlist(None), snap)
    if not token.startswith(KEY_PREFIX) or len(token) > 200:
        raise Unauthenticated("invalid virtual key")
    key = snap.key(digest(token))
    if key is None or not key.usable(utcnow()):
        # Unknown, revoked and expired look the same from outside.
        raise Unauthenticated("invalid virtual key")
    return Caller(key, snap.allowlist(key), snap)
