"""What Portcullis learned and obtained at an upstream's authorization server, per MCP server,
kept apart from what the admin entered (``mcp_servers.oauth_config``) so that an edit of those
settings never wipes a registration: the discovered metadata and the client registration
(``registration``), and for ``oauth`` servers the one shared token an admin connected."""
from __future__ import annotations

from ..crypto import EncryptedJSON
from ..extensions import db
from .base import utcnow

SHARED_STATUSES = ("active", "needs_reauth")


class UpstreamOAuth(db.Model):
    __tablename__ = "upstream_oauth"

    mcp_server_id = db.Column(db.Integer, db.ForeignKey("mcp_servers.id", ondelete="CASCADE"), primary_key=True)
    # {"resource": ..., "resource_metadata": {...}, "metadata": {RFC 8414}, "client": {client_id,
    #  client_secret?, token_endpoint_auth_method, redirect_uri, how}, "fingerprint": ...}
    registration = db.Column(EncryptedJSON("upstream_oauth.registration"))
    # oauth (shared) servers: the token response of the admin's connection
    token = db.Column(EncryptedJSON("upstream_oauth.token"))
    status = db.Column(db.String(16))
    scopes = db.Column(db.JSON)
    expires_at = db.Column(db.DateTime)
    connected_by_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    connected_at = db.Column(db.DateTime)
    refresh_lease_until = db.Column(db.DateTime)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        db.CheckConstraint("status IS NULL OR status IN ('active', 'needs_reauth')", name="status"),
    )
