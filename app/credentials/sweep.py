"""The credentials' part of the background clean-up (app/sweep.py runs it): a full
reconciliation first (keys expire by the clock, without an edit that would reconcile them),
then expired flows and ``orphaned`` credentials older than the retention. Rows are locked in
the one order every writer follows: the reconcile lock, flows, credentials (id order)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from ..extensions import db
from ..models import Credential, Flow
from . import reconcile, store


def reconcile_all() -> int:
    return reconcile.run_all().changed


def expired_flows(now) -> int:
    return db.session.execute(delete(Flow).where(Flow.id.in_(
        select(Flow.id).where(Flow.expires_at <= now).order_by(Flow.id).with_for_update()))
        .execution_options(synchronize_session=False)).rowcount


def old_orphans(now, retention_days: int) -> int:
    cutoff = now - timedelta(days=retention_days)
    n = db.session.execute(delete(Credential).where(Credential.id.in_(
        select(Credential.id).where(Credential.status == "orphaned", Credential.status_changed_at < cutoff)
        .order_by(Credential.id).with_for_update()))
        .execution_options(synchronize_session=False)).rowcount
    if n:
        store.invalidate()
    return n
