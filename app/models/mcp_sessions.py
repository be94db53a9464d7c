"""Sessions of agents on Portcullis's own /mcp endpoint (the Mcp-Session-Id it issues)."""
from __future__ import annotations

from ..extensions import db
from .base import iso, utcnow


class McpSession(db.Model):
    __tablename__ = "mcp_sessions"

    id = db.Column(db.String(64), primary_key=True)  # the Mcp-Session-Id (random, 32 bytes)
    virtual_key_id = db.Column(db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE"), index=True)
    # Who opened it (app/identity.py Caller.principal): no other caller may use it.
    principal = db.Column(db.String(80), nullable=False)
    # Set for sessions opened on /mcp/<server-name>: the session only serves that server.
    server_id = db.Column(db.Integer, db.ForeignKey("mcp_servers.id", ondelete="CASCADE"))
    protocol_version = db.Column(db.String(16), nullable=False)
    client_info = db.Column(db.JSON, nullable=False, default=dict)
    capabilities = db.Column(db.JSON, nullable=False, default=dict)
    log_level = db.Column(db.String(16))  # set by logging/setLevel: relayed log messages at or above it
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    ended_at = db.Column(db.DateTime)

    def to_dict(self) -> dict:
        return {"id": self.id, "virtual_key_id": self.virtual_key_id, "principal": self.principal,
                "server_id": self.server_id,
                "protocol_version": self.protocol_version, "client_info": self.client_info,
                "created_at": iso(self.created_at), "ended_at": iso(self.ended_at)}
