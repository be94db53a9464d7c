"""The upstream sessions an agent session holds of its own, in the database.

An agent session that subscribes to a resource or sets a log level gets an upstream session of
its own with that server (``Endpoint.owner``): the state lives there. Its upstream
``Mcp-Session-Id`` is stored here (encrypted), per (agent session, server), so whichever worker
or instance serves the agent's next request, or holds its GET stream, uses the same upstream
session. The upstream client (app/upstream/client.py) asks this store on a miss of its own
in-memory cache: ``load`` before initialising, ``save`` after (the first saved wins: a racing
initialise on another instance is ended and the winner used), ``forget`` when the upstream
forgot the session.
"""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import McpUpstreamSession


def _row(ep) -> McpUpstreamSession | None:
    return db.session.scalar(select(McpUpstreamSession).where(
        McpUpstreamSession.agent_session_id == ep.owner, McpUpstreamSession.server_id == ep.server_id))


def held(agent_session_id: str) -> set[int]:
    """The servers with which this agent session holds an upstream session of its own."""
    return set(db.session.scalars(select(McpUpstreamSession.server_id).where(
        McpUpstreamSession.agent_session_id == agent_session_id)))


def hold(agent_session_id: str, server_id: int) -> bool:
    """Mark (agent session, server) as stateful; True when it was not yet."""
    if db.session.scalar(select(McpUpstreamSession.id).where(
            McpUpstreamSession.agent_session_id == agent_session_id,
            McpUpstreamSession.server_id == server_id)) is not None:
        return False
    try:
        with db.session.begin_nested():
            db.session.add(McpUpstreamSession(agent_session_id=agent_session_id, server_id=server_id))
        db.session.commit()
    except IntegrityError:  # another worker marked it meanwhile
        db.session.rollback()
        return False
    return True


class OwnedSessions:
    """The upstream client's store for owned endpoints (``UpstreamClient.owned``)."""

    def load(self, ep):
        """(upstream session id, protocol version), or None when there is none yet."""
        row = _row(ep)
        if row is None or not row.upstream_session_id or not row.protocol_version:
            return None
        return row.upstream_session_id, row.protocol_version

    def save(self, ep, session_id: str | None, protocol_version: str):
        """Store a freshly initialised upstream session; returns the one to use: this one, or
        the one another worker stored first (the caller ends its own then)."""
        if not session_id:
            return session_id, protocol_version
        row = _row(ep)
        if row is None:
            try:
                with db.session.begin_nested():
                    db.session.add(McpUpstreamSession(agent_session_id=ep.owner, server_id=ep.server_id,
                                                      upstream_session_id=session_id,
                                                      protocol_version=protocol_version))
                db.session.commit()
                return session_id, protocol_version
            except IntegrityError:
                db.session.rollback()
                row = _row(ep)
        if row is not None and row.upstream_session_id:
            db.session.rollback()
            return row.upstream_session_id, row.protocol_version
        done = db.session.execute(update(McpUpstreamSession).where(
            McpUpstreamSession.agent_session_id == ep.owner, McpUpstreamSession.server_id == ep.server_id,
            McpUpstreamSession.upstream_session_id.is_(None)).values(
            upstream_session_id=session_id, protocol_version=protocol_version, last_event_id=None))
        db.session.commit()
        if done.rowcount:
            return session_id, protocol_version
        row = _row(ep)
        db.session.rollback()
        return (row.upstream_session_id, row.protocol_version) if row is not None else (session_id, protocol_version)

    def forget(self, ep, session_id: str | None) -> None:
        """The upstream forgot ``session_id`` (or it was ended): the next request initialises
        a new one. Only that one: a newer one another worker stored stays."""
        row = _row(ep)
        if row is not None and row.upstream_session_id == session_id:
            row.upstream_session_id, row.protocol_version, row.last_event_id = None, None, None
            db.session.commit()
        else:
            db.session.rollback()


def last_event_id(agent_session_id: str, server_id: int, upstream_session_id: str) -> str | None:
    row = db.session.scalar(select(McpUpstreamSession).where(
        McpUpstreamSession.agent_session_id == agent_session_id, McpUpstreamSession.server_id == server_id))
    if row is None or row.upstream_session_id != upstream_session_id:
        return None
    return row.last_event_id


def remember_event_id(agent_session_id: str, server_id: int, event_id: str, commit: bool = True) -> None:
    db.session.execute(update(McpUpstreamSession).where(
        McpUpstreamSession.agent_session_id == agent_session_id, McpUpstreamSession.server_id == server_id)
        .values(last_event_id=event_id[:500]))
    if commit:
        db.session.commit()
