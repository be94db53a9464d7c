"""Background clean-up: expired submission flows (every 15 minutes) and ``orphaned`` credentials
older than the retention (daily; PORTCULLIS_ORPHAN_RETENTION_DAYS, default 30). Each run first
reconciles every binding (keys expire by the clock, without an edit that would reconcile them).
Nothing else is ever touched.

Runs in-process in a daemon thread (PORTCULLIS_SWEEP=false turns it off) and as
``flask --app wsgi sweep``. With several instances on PostgreSQL only one sweeps at a time: each
run holds a transaction-scoped advisory lock (the lease) and a run that cannot take it skips.
On SQLite (one host) the deletes are idempotent, so overlapping runs are harmless.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy import text

from .credentials import sweep as credentials
from .oauth_server import sweep as oauth
from .mcp import streams

from . import metrics
from .extensions import db
from .models.base import utcnow

log = logging.getLogger(__name__)

FLOW_EVERY = 15 * 60
ORPHAN_EVERY = 24 * 3600
LEASE_KEY = 0x706F7274  # "port": the advisory lock id of the sweeper


@dataclass
class SweepReport:
    flows: int = 0
    orphans: int = 0
    skipped: bool = False
    reconciled: int = 0
    oauth: int = 0  # expired codes, refresh tokens, ended consents and retired signing keys
    events: int = 0  # stream events older than PORTCULLIS_STREAM_RETENTION_SECONDS
    mcp_sessions: int = 0  # MCP sessions ended longer ago than that


def retention_days(app) -> int:
    return max(int(app.config.get("PORTCULLIS_ORPHAN_RETENTION_DAYS", 30)), 0)


def _lease() -> bool:
    if db.engine.dialect.name != "postgresql":
        return True
    return bool(db.session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LEASE_KEY}).scalar())


def sweep(app, flows: bool = True, orphans: bool = True, now=None) -> SweepReport:
    """One run, in one transaction (call inside an app context)."""
    now = now or utcnow()
    report = SweepReport()
    try:
        if not _lease():
            db.session.rollback()
            report.skipped = True
            metrics.SWEEPS.labels("skipped").inc()
            return report
        # the reconcile lock first, then flow rows, then credential rows (id order): the one lock order
        report.reconciled = credentials.reconcile_all()
        if flows:
            report.flows = credentials.expired_flows(now)
        if orphans:
            report.orphans = credentials.old_orphans(now, retention_days(app))
        report.oauth = oauth.sweep(now, retention_days(app), app.config["PORTCULLIS_REFRESH_TOKEN_DAYS"])
        # the GET /mcp event log beyond its retention, and agent sessions ended longer ago
        report.events, report.mcp_sessions = streams.trim(now)
        db.session.commit()  # releases the lease
    except Exception:
        db.session.rollback()
        metrics.SWEEPS.labels("failed").inc()
        raise
    metrics.SWEEPS.labels("done").inc()
    return report


def start_background(app, every: float = FLOW_EVERY, stop: threading.Event | None = None) -> threading.Thread | None:
    """The sweeper thread: a run every ``every`` seconds (the first after one interval), old
    orphans at the first run and then daily. Setting ``stop`` ends it (tests)."""
    if not app.config.get("PORTCULLIS_SWEEP", True):
        return None
    stop = stop or threading.Event()

    def run():
        last_orphans = -math.inf
        while not stop.wait(every):
            try:
                with app.app_context():
                    due = time.monotonic() - last_orphans >= ORPHAN_EVERY
                    report = sweep(app, orphans=due)
                    if due and not report.skipped:
                        last_orphans = time.monotonic()
                    db.session.remove()
                if report.flows or report.orphans:
                    log.info("sweep: %d expired flow(s), %d old orphaned credential(s) deleted",
                             report.flows, report.orphans)
            except Exception:  # a failed run is retried at the next tick
                log.exception("sweep failed")

    thread = threading.Thread(target=run, daemon=True, name="portcullis-sweep")
    thread.start()
    return thread
