"""Refreshing an upstream access token once, whichever instance and thread asks.

A token lives in a row: a per-binding ``credentials`` row (``values``) or a server's shared
``upstream_oauth`` row (``token``). A refresh takes that row's lease with one conditional UPDATE
(``refresh_lease_until`` empty or past), commits, calls the token endpoint outside any
transaction, and stores the answer (the rotated refresh token included) with the lease released,
only while it still holds the lease. Everyone else waits for the lease to go and re-reads the row:
exactly one refresh token is spent, even across instances. Not the reconciliation's global lock:
a refresh held across an HTTP call must never block admin edits.

``invalid_grant`` (the grant is gone at the upstream) marks the row ``needs_reauth``; a network
error or a 5xx is retried a few times and never marks anything bad."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from ..extensions import db
from ..models import Credential, UpstreamOAuth
from ..models.base import utcnow
from . import protocol, registration

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)  # longer than a token call can take (timeouts 5 + 10 s)
EARLY = timedelta(seconds=60)  # refresh this long before the access token expires (at most a tenth of its life)
RETRIES = 3
WAIT_STEP = 0.05
# orphaned: not used while its grant is gone, but kept alive (and usable for reading tools)
USABLE = ("active", "orphaned")


class NeedsReauth(Exception):
    """The token cannot be refreshed: the person (or admin) must connect again."""


class RefreshUnavailable(Exception):
    """A refresh failed for now (network, 5xx, a lease held too long); try again later."""


@dataclass(frozen=True)
class Slot:
    """Where a token lives: a model, its key, and the attribute holding the token values."""
    model: type
    key: object
    values_attr: str

    @property
    def pk(self):
        return self.model.id if self.model is Credential else self.model.mcp_server_id

    @classmethod
    def credential(cls, cred_id: int) -> Slot:
        return cls(Credential, cred_id, "values")

    @classmethod
    def shared(cls, server_id: int) -> Slot:
        return cls(UpstreamOAuth, server_id, "token")

    def read(self):
        db.session.rollback()  # a fresh read: not an identity-map copy from before
        return db.session.scalar(select(self.model).where(self.pk == self.key))

    def server_id(self, row) -> int:
        return row.mcp_server_id


def due(expires_at, values: dict | None = None, now=None) -> bool:
    """Is a token expiring within the margin? (None: the upstream did not say; used until refused.)"""
    if expires_at is None:
        return False
    early = EARLY
    lifetime = (values or {}).get("expires_in")
    if isinstance(lifetime, int) and lifetime > 0:
        early = min(early, timedelta(seconds=lifetime / 10))
    return expires_at - early <= (now or utcnow())


def refresh(slot: Slot, used_access_token: str | None = None) -> dict:
    """The slot's current token values after making sure they are fresh: refreshed by us, or by
    whoever held the lease meanwhile. ``used_access_token``: the token the upstream just refused
    (401); if the row already holds another one, that one is returned without a refresh."""
    deadline = time.monotonic() + LEASE.total_seconds() + 5
    while True:
        row = slot.read()
        if row is None or row.status not in USABLE or not getattr(row, slot.values_attr):
            raise NeedsReauth()
        values = dict(getattr(row, slot.values_attr))
        if used_access_token is not None:
            if values.get("access_token") != used_access_token:
                return values  # another request (or instance) refreshed already
        elif not due(row.expires_at, values):
            return values
        now = utcnow()
        lease = now + LEASE
        taken = db.session.execute(
            update(slot.model).where(slot.pk == slot.key, slot.model.status.in_(USABLE),
                                     or_(slot.model.refresh_lease_until.is_(None),
                                         slot.model.refresh_lease_until < now))
            .values(refresh_lease_until=lease).execution_options(synchronize_session=False)).rowcount
        db.session.commit()
        if taken == 1:
            # another refresh may have finished between our read and the lease: read again
            row = slot.read()
            now_values = dict(getattr(row, slot.values_attr) or {})
            if now_values.get("access_token") == values.get("access_token"):
                break
            _release(slot, lease)
            return now_values
        if time.monotonic() > deadline:
            raise RefreshUnavailable("a refresh of this token is taking too long; try again")
        time.sleep(WAIT_STEP)  # someone else refreshes: wait for the lease to go, then re-read
    return _refresh_holding(slot, lease)


def _release(slot: Slot, lease, **values) -> None:
    db.session.execute(update(slot.model).where(slot.pk == slot.key, slot.model.refresh_lease_until == lease)
                       .values(refresh_lease_until=None, **values).execution_options(synchronize_session=False))
    db.session.commit()
    _invalidate()


def _refresh_holding(slot: Slot, lease) -> dict:
    row = slot.read()
    values = dict(getattr(row, slot.values_attr) or {})
    if not values.get("refresh_token"):
        _release(slot, lease, status="needs_reauth", **_changed(slot))
        raise NeedsReauth()
    server_id = slot.server_id(row)
    try:
        reg = registration.ensure(server_id)
    except Exception as e:  # discovery failed: the network, or the upstream changed
        _release(slot, lease)
        raise RefreshUnavailable(str(e)) from None
    db.session.rollback()  # nothing held open across the HTTP call
    token, last = None, None
    for attempt in range(RETRIES):
        try:
            token = protocol.refresh(reg, values["refresh_token"])
            break
        except protocol.Refused as e:
            if e.error in ("invalid_grant", "invalid_client"):
                _release(slot, lease, status="needs_reauth", **_changed(slot))
                if e.error == "invalid_client":  # the upstream forgot our client: register again next time
                    registration.drop(server_id)
                log.info("upstream refresh refused (%s): %s %s needs re-authentication",
                         e.error, slot.model.__tablename__, slot.key)
                raise NeedsReauth() from None
            last = e
            break  # another OAuth error: the request is wrong, retrying will not help
        except protocol.Unreachable as e:
            last = e
            time.sleep(0.2 * (attempt + 1))
    if token is None:
        _release(slot, lease)
        log.warning("upstream refresh failed for %s %s: %s", slot.model.__tablename__, slot.key, last)
        raise RefreshUnavailable(str(last))
    new, expires_at, scopes = protocol.stored(token, values)
    extra = {slot.values_attr: new, "expires_at": expires_at, "updated_at": utcnow()}
    if scopes is not None:
        extra["scopes"] = scopes
    # written only while we still hold the lease: the rotated refresh token is stored before use
    db.session.execute(update(slot.model).where(slot.pk == slot.key, slot.model.refresh_lease_until == lease)
                       .values(refresh_lease_until=None, **extra).execution_options(synchronize_session=False))
    db.session.commit()
    _invalidate()
    return new


def _changed(slot: Slot) -> dict:
    now = utcnow()
    return {"status_changed_at": now, "updated_at": now} if slot.model is Credential else {"updated_at": now}


def _invalidate() -> None:
    from ..credentials import store
    store.invalidate()
