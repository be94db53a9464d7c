"""Cache invalidation across instances.

Each process keeps in-memory copies of configuration (the snapshot, stored credentials) that a
commit in the same process drops at once (``snapshot.on_commit_touching``). Other instances learn
of the commit through this bus within a second: Redis pub/sub when ``REDIS_URL`` is set, else
PostgreSQL ``LISTEN/NOTIFY`` on PostgreSQL, else nothing (SQLite: one host). The message is only
the name of the cache to drop ("config", "credentials"), never data. When the bus is down, the
time-based expiry (``PORTCULLIS_CONFIG_CACHE_SECONDS``) still bounds the lag, and a listener that
reconnects drops every cache (it may have missed messages).

The same bus carries a few messages with an argument (``on_message``/``send``), applied in every
process, the sender's too: ``cancel`` (app/mcp/relay.py) names an agent's call in flight by
hashes only, so that the process holding it forwards the agent's cancellation upstream.
"""
from __future__ import annotations

import logging
import secrets
import threading
from typing import Callable

log = logging.getLogger("portcullis.cluster")

CHANNEL = "portcullis_invalidate"
INSTANCE = secrets.token_hex(6)  # this process: its own messages are not applied twice
RETRY_SECONDS = 1.0
POLL_SECONDS = 5.0  # how often an idle listener checks that its connection is alive

_topics: dict[str, Callable[[], None]] = {}
# Topics with an argument (``<name>:<arg>``: ``cancel:<call digest>``, app/mcp/relay.py;
# ``stream:<session id>``, that session has new events, app/mcp/streams.py): the handler gets
# the argument, in every process, the sender included. Still never data.
_handlers: dict[str, Callable[[str], None]] = {}
_bus: list = [None]  # the process's publisher (set by start())


def register(topic: str, drop: Callable[[], None]) -> None:
    """``drop`` empties one cache; it runs when another instance announces ``topic``."""
    _topics[topic] = drop


def on_message(topic: str, handle: Callable[[str], None]) -> None:
    """``handle(argument)`` runs (in the listener's thread) for each ``send(topic, argument)``
    of any process, this one included."""
    _handlers[topic] = handle


def send(topic: str, argument: str) -> bool:
    """Announce one message with an argument; False when there is no bus (or it failed)."""
    bus = _bus[0]
    if bus is None:
        return False
    try:
        bus.publish(f"{INSTANCE}:{topic}:{argument}")
        return True
    except Exception as e:  # noqa: BLE001
        log.warning("could not send a %s message to other instances (%s)", topic, type(e).__name__)
        return False


def drop_all() -> None:
    for drop in _topics.values():
        drop()


def received(payload: str) -> bool:
    """Apply one message (``<instance>:<topic>``); True when it dropped a cache."""
    sender, _, topic = payload.partition(":")
    name, with_argument, argument = topic.partition(":")
    if with_argument and name in _handlers:
        try:
            _handlers[name](argument)
        except Exception:  # noqa: BLE001 - one bad message must not end the listener
            log.exception("a %s message could not be applied", name)
        return False
    if sender == INSTANCE or topic not in _topics:
        return False
    _topics[topic]()
    from . import metrics
    metrics.INVALIDATIONS.labels(topic=topic).inc()
    return True


def publish(topics) -> None:
    """Tell the other instances (after a commit); never raises: the expiry is the fallback."""
    bus = _bus[0]
    if bus is None:
        return
    for topic in topics:
        try:
            bus.publish(f"{INSTANCE}:{topic}")
        except Exception as e:  # noqa: BLE001
            log.warning("could not announce a %s change to other instances (%s); they see it within "
                        "PORTCULLIS_CONFIG_CACHE_SECONDS", topic, type(e).__name__)


class RedisBus:
    def __init__(self, url: str, prefix: str = ""):
        import redis

        self.channel = f"{prefix}:{CHANNEL}" if prefix else CHANNEL
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                           health_check_interval=POLL_SECONDS)

    def publish(self, payload: str) -> None:
        self.client.publish(self.channel, payload)

    def listen(self, stop: threading.Event, ready: Callable[[], None], handle=None) -> None:
        handle = handle or received
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            ready()
            while not stop.is_set():
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is None:
                    pubsub.ping()  # a dead connection raises here rather than waiting forever
                elif message.get("type") == "message":
                    data = message["data"]
                    handle(data.decode() if isinstance(data, bytes) else data)
        finally:
            pubsub.close()


class PostgresBus:
    def __init__(self, engine):
        self.engine = engine
        url = engine.url.set(drivername="postgresql")
        self.dsn = url.render_as_string(hide_password=False)

    def publish(self, payload: str) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_notify(%(c)s, %(p)s)", {"c": CHANNEL, "p": payload})
            conn.commit()

    def listen(self, stop: threading.Event, ready: Callable[[], None], handle=None) -> None:
        import psycopg

        handle = handle or received
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            ready()
            while not stop.is_set():
                got = False
                for note in conn.notifies(timeout=POLL_SECONDS, stop_after=64):
                    got = True
                    handle(note.payload)
                if not got:
                    conn.execute("SELECT 1")  # raises on a dead connection


def bus_for(app):
    if app.config.get("REDIS_URL"):
        return RedisBus(app.config["REDIS_URL"], app.config.get("RATELIMIT_KEY_PREFIX") or "")
    from .extensions import db

    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "postgresql":
        return PostgresBus(engine)
    return None


class Listener:
    """The background thread that applies other instances' messages (one per process)."""

    def __init__(self, bus):
        self.bus, self.stop, self.connected = bus, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="portcullis-invalidate")

    def _run(self) -> None:
        ever = False
        while not self.stop.is_set():
            try:
                self.bus.listen(self.stop, self._reconnected if ever else self._ready)
            except Exception as e:  # noqa: BLE001  (retried; the expiry covers the gap)
                if self.connected.is_set():
                    log.warning("invalidation listener lost its connection (%s); reconnecting", type(e).__name__)
            ever = ever or self.connected.is_set()
            self.connected.clear()
            self.stop.wait(RETRY_SECONDS)

    def _ready(self) -> None:
        self.connected.set()

    def _reconnected(self) -> None:
        self.connected.set()
        drop_all()  # messages sent while we were away are lost


def start(app) -> Listener | None:
    """Publish this process's commits and listen to the others' (call once per process)."""
    bus = bus_for(app)
    _bus[0] = bus
    if bus is None:
        return None
    listener = Listener(bus)
    listener.thread.start()
    app.extensions["invalidation_listener"] = listener
    return listener


def stop() -> None:
    """Forget the bus (tests)."""
    _bus[0] = None
