"""The sweeper: expired flows and old orphaned credentials go, nothing else; one sweeper at a
time on PostgreSQL (advisory-lock lease); `flask sweep`; the background thread."""
import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import Credential, Flow, McpServer, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow
from app.sweep import LEASE_KEY, start_background, sweep

from tests.conftest import make_user
from tests.support.mcp import wait_for


@pytest.fixture
def rows(app, ctx):
    now = utcnow()
    users = [make_user(app, f"u{i}@example.com") for i in range(4)]
    server = McpServer(name="srv", url="http://127.0.0.1:1/mcp", auth_type="per_user_headers",
                       per_user_header_keys=["x-api-key"], tools=[])
    db.session.add(server)
    db.session.flush()
    keys = []
    for i in range(3):  # granted: their flows are live bindings, which reconciliation keeps
        key, _ = VirtualKey.generate(name=f"k{i}")
        key.server_grants.append(VirtualKeyServerGrant(mcp_server_id=server.id))
        db.session.add(key)
        keys.append(key)
    # only the active credential's owner has access: the orphaned ones stay orphaned
    key, _ = VirtualKey.generate(name="u2", owner_id=users[2])
    key.server_grants.append(VirtualKeyServerGrant(mcp_server_id=server.id))
    db.session.add(key)
    db.session.flush()
    for uid, status, age in zip(users, ("orphaned", "orphaned", "active", "needs_update"), (31, 29, 400, 400)):
        db.session.add(Credential(auth_mode="user", user_id=uid, mcp_server_id=server.id, status=status,
                                  values={"x-api-key": "v"}, header_keys=["x-api-key"],
                                  status_changed_at=now - timedelta(days=age)))
    for key, (fid, status, expires) in zip(keys, (("old", "pending", -1), ("used", "used", -60), ("live", "pending", 600))):
        db.session.add(Flow(id=fid, auth_mode="vk", virtual_key_id=key.id, mcp_server_id=server.id, status=status,
                            expires_at=now + timedelta(seconds=expires)))
    db.session.commit()
    return users


def state():
    return (sorted(f.id for f in db.session.scalars(select(Flow))),
            sorted((c.user_id, c.status) for c in db.session.scalars(select(Credential))))


def test_sweep_deletes_only_expired_flows_and_old_orphans(app, rows):
    report = sweep(app)
    assert (report.flows, report.orphans, report.skipped) == (2, 1, False)
    flows, creds = state()
    assert flows == ["live"]
    assert creds == sorted([(rows[1], "orphaned"), (rows[2], "active"), (rows[3], "needs_update")])
    assert db.session.scalar(select(db.func.count()).select_from(McpServer)) == 1


def test_retention_is_configurable(app, rows, monkeypatch):
    monkeypatch.setitem(app.config, "PORTCULLIS_ORPHAN_RETENTION_DAYS", 7)
    assert sweep(app, flows=False).orphans == 2


def test_cli(app, rows):
    result = app.test_cli_runner().invoke(args=["sweep"])
    assert result.exit_code == 0, result.output
    assert "2 expired flow(s), 1 old orphaned credential(s)" in result.output


def test_only_one_sweeper_at_a_time_on_postgresql(app, rows):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the lease is a PostgreSQL advisory lock")
    with db.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LEASE_KEY})
        try:
            assert sweep(app).skipped is True
            assert len(state()[0]) == 3
        finally:
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEASE_KEY})
    assert sweep(app).flows == 2


def test_the_background_thread_sweeps_at_every_tick_and_orphans_daily(app, rows, caplog):
    caplog.set_level(logging.INFO, logger="app.sweep")
    stop = threading.Event()
    thread = start_background(app, every=0.05, stop=stop)
    assert thread is not None and thread.name == "portcullis-sweep"

    def swept(expected):
        db.session.remove()  # a fresh transaction: see what the thread committed
        return state() == expected

    try:
        # the first run: expired flows and old orphans (the first run is always due for them)
        wait_for(lambda: swept((["live"], sorted([(rows[1], "orphaned"), (rows[2], "active"),
                                                   (rows[3], "needs_update")]))), "the first sweep")
        assert "sweep: 2 expired flow(s), 1 old orphaned credential(s) deleted" in caplog.text
        # later runs: another expired flow goes at the next tick; another old orphan waits a day
        key_id = db.session.scalar(select(VirtualKey.id).where(VirtualKey.name == "k0"))
        server_id = db.session.scalar(select(McpServer.id))
        late = make_user(app, "late@example.com")
        db.session.add(Flow(id="old-again", auth_mode="vk", virtual_key_id=key_id, mcp_server_id=server_id,
                            status="pending", expires_at=utcnow() - timedelta(seconds=1)))
        db.session.add(Credential(auth_mode="user", user_id=late, mcp_server_id=server_id, status="orphaned",
                                  values={"x-api-key": "v"}, header_keys=["x-api-key"],
                                  status_changed_at=utcnow() - timedelta(days=40)))
        db.session.commit()
        wait_for(lambda: swept((["live"], sorted([(rows[1], "orphaned"), (rows[2], "active"),
                                                   (rows[3], "needs_update"), (late, "orphaned")]))),
                 "the next sweep")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_no_background_thread_when_turned_off(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTCULLIS_SWEEP", False)
    assert start_background(app, every=0.05) is None
