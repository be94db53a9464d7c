"""The invalidation bus (app/cluster.py): what one instance commits, the others drop from their
caches within a second; over PostgreSQL LISTEN/NOTIFY and over Redis pub/sub. Two instances end
to end: tests/cluster/."""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid

import pytest
from sqlalchemy import update

from app import cluster, snapshot
from app.credentials import store
from app.extensions import db
from app.models import VirtualKey
from tests.support.proxy import add_proxy_key

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


class Tap:
    """What goes over the bus, read by a connection of the test's own (as another instance)."""

    def __init__(self, bus):
        self.bus, self.seen, self.stop, self.ready = bus, queue.Queue(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.bus.listen, args=(self.stop, self.ready.set, self.seen.put),
                                       daemon=True)

    def next(self, timeout=1.0) -> str:
        return self.seen.get(timeout=timeout)


@pytest.fixture(params=["postgres", "redis"])
def bus(request, app):
    if request.param == "postgres":
        with app.app_context():
            if db.engine.dialect.name != "postgresql":
                pytest.skip("LISTEN/NOTIFY needs PostgreSQL (TEST_DATABASE_URL)")
            yield cluster.PostgresBus(db.engine)
    else:
        if not _redis_up():
            pytest.skip(f"no Redis at {REDIS_URL}")
        yield cluster.RedisBus(REDIS_URL, prefix="test-" + uuid.uuid4().hex[:8])


@pytest.fixture
def listening(bus):
    """This process listens to the bus and publishes its commits on it, as an instance does."""
    listener = cluster.Listener(bus)
    cluster._bus[0] = bus
    listener.thread.start()
    assert listener.connected.wait(5)
    yield listener
    cluster.stop()
    listener.stop.set()
    listener.thread.join(10)


def _another_instance_says(bus, topic: str) -> None:
    bus.publish(f"another-instance:{topic}")


@pytest.mark.parametrize("topic, generation", [("config", snapshot._generation), ("credentials", store._generation)])
def test_a_message_from_another_instance_drops_the_cache_within_a_second(bus, listening, topic, generation):
    before = generation[0]
    started = time.monotonic()
    _another_instance_says(bus, topic)
    while generation[0] == before:
        assert time.monotonic() - started < 1.0, "not dropped within a second"
        time.sleep(0.005)


def test_own_messages_are_not_applied_twice(bus, listening):
    before = snapshot._generation[0]
    bus.publish(f"{cluster.INSTANCE}:config")
    _another_instance_says(bus, "credentials")  # the marker: the bus delivers in order
    deadline = time.monotonic() + 2
    while store._generation[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert snapshot._generation[0] == before


def test_commits_are_announced_orm_edits_and_bulk_statements_alike(app, bus, listening):
    tap = Tap(bus)
    tap.thread.start()
    assert tap.ready.wait(5)
    try:
        key_id, _ = add_proxy_key(app, {})  # an ORM insert
        assert tap.next() == f"{cluster.INSTANCE}:config"
        with app.app_context():  # a bulk statement: no ORM object in the session
            db.session.execute(update(VirtualKey).where(VirtualKey.id == key_id).values(active=False))
            db.session.commit()
        assert tap.next() == f"{cluster.INSTANCE}:config"
        with app.app_context():  # bookkeeping only (the proxy's last_used_at): nothing to drop
            db.session.execute(update(VirtualKey.__table__).where(VirtualKey.id == key_id)
                               .values(last_used_at=VirtualKey.created_at))
            db.session.commit()
            db.session.execute(update(VirtualKey).where(VirtualKey.id == key_id).values(name="x"))
            db.session.rollback()  # rolled back: nothing either
        _another_instance_says(bus, "marker")
        assert tap.next() == "another-instance:marker"
    finally:
        tap.stop.set()
        tap.thread.join(10)


def test_a_listener_that_reconnects_drops_everything():
    """Messages sent while it was away are lost: it drops every cache when it is back."""
    class Flaky:
        def __init__(self):
            self.rounds = 0

        def listen(self, stop, ready):
            self.rounds += 1
            ready()
            if self.rounds == 1:
                raise ConnectionError("gone")
            stop.wait(5)

    before = snapshot._generation[0]
    listener = cluster.Listener(Flaky())
    listener.thread.start()
    try:
        deadline = time.monotonic() + 3
        while snapshot._generation[0] == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert snapshot._generation[0] > before
    finally:
        listener.stop.set()
        listener.thread.join(10)
