"""What the server-to-client streams of /mcp need in the database (app/mcp/streams.py,
app/mcp/upstream_sessions.py): each agent session's event log, and the upstream sessions an
agent session holds of its own."""
from __future__ import annotations

from ..crypto import EncryptedJSON, EncryptedText
from ..extensions import db
from .base import utcnow


class McpSessionEvent(db.Model):
    """One message for an agent session's GET stream; ``id`` is the SSE event id."""

    __tablename__ = "mcp_session_events"

    id = db.Column(db.Integer, primary_key=True, autoincrement=True)
    session_id = db.Column(db.String(64), db.ForeignKey("mcp_sessions.id", ondelete="CASCADE"), nullable=False)
    payload = db.Column(EncryptedJSON("mcp_session_events.payload"), nullable=False)  # a JSON-RPC message
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)

    __table_args__ = (db.Index("ix_mcp_session_events_session_id_id", "session_id", "id"),)


class McpUpstreamSession(db.Model):
    """The upstream session an agent session holds with one server (it carries that agent's
    subscriptions, log level, pending server-to-client requests): any worker or instance uses
    the same one. ``upstream_session_id`` is NULL until the first request initialises it."""

    __tablename__ = "mcp_upstream_sessions"

    id = db.Column(db.Integer, primary_key=True)
    agent_session_id = db.Column(db.String(64), db.ForeignKey("mcp_sessions.id", ondelete="CASCADE"),
                                 nullable=False)
    server_id = db.Column(db.Integer, db.ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=False)
    upstream_session_id = db.Column(EncryptedText("mcp_upstream_sessions.upstream_session_id"))
    protocol_version = db.Column(db.String(16))
    # The last SSE event id seen on the upstream's GET stream (resumed with Last-Event-ID).
    last_event_id = db.Column(EncryptedText("mcp_upstream_sessions.last_event_id"))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (db.UniqueConstraint("agent_session_id", "server_id", name="uq_mcp_upstream_sessions_agent_server"),)
