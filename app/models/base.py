"""Small helpers shared by the models."""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime


MAX_ID = 2**31 - 1  # ids are 32-bit integers on every database; larger ones are unknown ids


def utcnow() -> datetime:
    """Naive UTC: stored the same way on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.replace(microsecond=0).isoformat() + "Z"


def new_secret(prefix: str, nbytes: int = 32) -> str:
    return prefix + secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    """SHA-256 of a high-entropy secret: enough for lookup, useless to a thief."""
    return hashlib.sha256(secret.encode()).hexdigest()
