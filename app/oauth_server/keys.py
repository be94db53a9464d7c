"""The RSA keys that sign access tokens: kept in the database (private part encrypted), read
by every instance through a short cache, so a rotation reaches all instances without restarts.

The newest unretired key signs. ``rotate`` retires every other key at once: a retired key no
longer signs but stays published and accepted until every token it signed has expired
(``remove_after``), then the sweeper deletes it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import or_, select

from ..extensions import db
from ..models import SigningKey
from ..models.base import utcnow

ALG = "RS256"
KEY_BITS = 2048
SKEW = timedelta(seconds=60)  # clocks of the instances and clients may differ this much
MIN_RELOAD_SECONDS = 1.0  # an unknown kid reloads the keys at most this often


def generate() -> SigningKey:
    key = RSAKey.generate_key(KEY_BITS, private=True)
    kid = key.thumbprint()  # RFC 7638
    public = {**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": ALG}
    return SigningKey(kid=kid, private_pem=key.as_pem(private=True).decode(), public_jwk=public)


def ensure() -> SigningKey | None:
    """Create the first signing key when none signs (the set-up step before the server starts,
    so that several workers never race to create one). Returns the new key, or None."""
    if db.session.scalar(select(SigningKey.id).where(SigningKey.retired_at.is_(None)).limit(1)) is not None:
        return None
    key = generate()
    db.session.add(key)
    db.session.flush()
    return key


def rotate(now: datetime | None = None) -> tuple[SigningKey, list[SigningKey]]:
    """A new key signs from now on; the previous ones stay published until their tokens expire."""
    now = now or utcnow()
    lifetime = timedelta(seconds=current_app.config["PORTCULLIS_ACCESS_TOKEN_SECONDS"])
    retired = list(db.session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))))
    for old in retired:
        old.retired_at = now
        old.remove_after = now + lifetime + SKEW
    new = generate()
    db.session.add(new)
    db.session.flush()
    return new, retired


def published(now: datetime | None = None):
    """Keys whose tokens may still be valid (signing and retired-but-not-expired), oldest first."""
    now = now or utcnow()
    return db.session.scalars(select(SigningKey).where(
        or_(SigningKey.remove_after.is_(None), SigningKey.remove_after > now)).order_by(SigningKey.id))


@dataclass
class Loaded:
    loaded_at: float
    signing: tuple[str, RSAKey] | None  # (kid, private key)
    verifying: KeySet
    kids: frozenset[str] = field(default_factory=frozenset)
    jwks: dict = field(default_factory=dict)


class KeyCache:
    """Parsed keys per process (``app.extensions["signing_keys"]``), refreshed from the database
    every PORTCULLIS_CONFIG_CACHE_SECONDS, at once after a rotation in this process, and when a
    token names a kid this process has not seen (another instance rotated)."""

    def __init__(self):
        self._loaded: Loaded | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._loaded = None

    def _current(self, force: bool = False) -> Loaded:
        loaded = self._loaded
        ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
        now = time.monotonic()
        if loaded is not None and not force and now - loaded.loaded_at < ttl:
            return loaded
        with self._lock:
            loaded = self._loaded
            if loaded is not None and now - loaded.loaded_at < (MIN_RELOAD_SECONDS if force else ttl):
                return loaded
            self._loaded = loaded = self._load()
            return loaded

    @staticmethod
    def _load() -> Loaded:
        rows = list(published())
        signing = next((r for r in reversed(rows) if r.retired_at is None), None)
        keys = [RSAKey.import_key(dict(r.public_jwk)) for r in rows]
        return Loaded(
            loaded_at=time.monotonic(),
            signing=(signing.kid, RSAKey.import_key(signing.private_pem)) if signing is not None else None,
            verifying=KeySet(keys), kids=frozenset(r.kid for r in rows),
            jwks={"keys": [dict(r.public_jwk) for r in rows]})

    def signing_key(self) -> tuple[str, RSAKey]:
        loaded = self._current()
        if loaded.signing is None:
            loaded = self._current(force=True)
        if loaded.signing is None:
            raise RuntimeError("no signing key: run 'flask --app wsgi ensure-admin' (make run does) "
                               "or 'flask --app wsgi rotate-signing-key'")
        return loaded.signing

    def verifying(self, kid: str) -> KeySet | None:
        """The published keys, if ``kid`` is among them (reloading once when it is not)."""
        loaded = self._current()
        if kid not in loaded.kids:
            loaded = self._current(force=True)
        return loaded.verifying if kid in loaded.kids else None

    def jwks(self) -> dict:
        return self._current().jwks


def cache() -> KeyCache:
    return current_app.extensions["signing_keys"]
