"""The Mcp-Session-Id sessions Portcullis issues: stored in the database (so any instance can
serve them) and cached in memory on the hot path."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import update

from .. import cluster
from ..extensions import db
from ..models import McpSession
from ..models.base import utcnow
from . import upstream_sessions

SESSION_TOPIC = "mcp-session"  # app/cluster.py: send(SESSION_TOPIC, session id) drops a cached session

MAX_CACHED = 20_000


@dataclass
class McpSessionInfo:
    id: str
    principal: str  # whom it belongs to (Caller.principal)
    server_id: int | None
    protocol_version: str
    capabilities: dict
    ended: bool
    checked_at: float
    log_level: str | None = None
    # Servers with which this agent session holds an upstream session of its own (it carries
    # this session's subscriptions or log level): read from the database with the session
    # (app/mcp/upstream_sessions.py), so every worker and instance uses the same one.
    stateful: set = field(default_factory=set)


class McpSessionStore:
    def __init__(self):
        self._cache: dict[str, McpSessionInfo] = {}
        self._lock = threading.Lock()

    def create(self, caller, server_id, protocol_version, client_info, capabilities) -> McpSessionInfo:
        sid = secrets.token_hex(32)
        db.session.add(McpSession(id=sid, virtual_key_id=caller.key_id, principal=caller.principal,
                                  server_id=server_id, protocol_version=protocol_version, client_info=client_info,
                                  capabilities=capabilities))
        db.session.commit()
        info = McpSessionInfo(sid, caller.principal, server_id, protocol_version, capabilities, False,
                              time.monotonic())
        self._put(info)
        return info

    def get(self, sid: str) -> McpSessionInfo | None:
        info = self._cache.get(sid)
        ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
        if info is not None and (info.ended or time.monotonic() - info.checked_at < ttl):
            return None if info.ended else info
        if len(sid) != 64:
            return None
        row = db.session.get(McpSession, sid)
        if row is None:
            return None
        info = McpSessionInfo(row.id, row.principal, row.server_id, row.protocol_version,
                              row.capabilities or {}, row.ended_at is not None, time.monotonic(), row.log_level,
                              upstream_sessions.held(row.id))
        self._put(info)
        return None if info.ended else info

    def end(self, info: McpSessionInfo) -> None:
        db.session.execute(update(McpSession).where(McpSession.id == info.id, McpSession.ended_at.is_(None))
                           .values(ended_at=utcnow()))
        db.session.commit()
        info.ended = True
        cluster.send(SESSION_TOPIC, info.id)

    def set_log_level(self, info: McpSessionInfo, level: str) -> None:
        db.session.execute(update(McpSession).where(McpSession.id == info.id).values(log_level=level))
        db.session.commit()
        info.log_level = level

    def hold_upstream(self, info: McpSessionInfo, server_id: int) -> None:
        """This agent session's traffic with that server goes to an upstream session of its own
        from now on; other processes drop their cached copy of the session (app/cluster.py)."""
        if server_id in info.stateful:
            return
        upstream_sessions.hold(info.id, server_id)
        info.stateful.add(server_id)
        cluster.send(SESSION_TOPIC, info.id)

    def drop(self, sid: str) -> None:
        """Forget the cached copy (another process changed the session)."""
        with self._lock:
            self._cache.pop(sid, None)

    def _put(self, info: McpSessionInfo) -> None:
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[info.id] = info
