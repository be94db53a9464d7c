"""Upstream MCP servers that Portcullis connects to as a client."""
from __future__ import annotations

from ..crypto import EncryptedJSON
from ..extensions import db
from .base import iso, utcnow

AUTH_TYPES = ("none", "headers", "oauth", "per_user_headers", "per_user_oauth")
OAUTH_TYPES = ("oauth", "per_user_oauth")


class McpServer(db.Model):
    __tablename__ = "mcp_servers"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(40), nullable=False, unique=True)
    url = db.Column(db.String(2048), nullable=False)
    auth_type = db.Column(db.String(32), nullable=False, default="none")
    # {header name: value} sent to the upstream on every call; values are write-only.
    shared_headers = db.Column(EncryptedJSON("mcp_servers.shared_headers"), nullable=False, default=dict)
    # Canonical (trimmed, lower-case, sorted) header names each member supplies for per_user_headers.
    per_user_header_keys = db.Column(db.JSON, nullable=False, default=list)
    # OAuth client settings for oauth / per_user_oauth (client_secret inside is write-only).
    oauth_config = db.Column(EncryptedJSON("mcp_servers.oauth_config"))
    allow_on_all_virtual_keys = db.Column(db.Boolean, nullable=False, default=False)
    enabled = db.Column(db.Boolean, nullable=False, default=True)
    tools = db.Column(db.JSON, nullable=False, default=list)  # as discovered at the upstream
    tools_refreshed_at = db.Column(db.DateTime)
    # ServerCapabilities the upstream announced at discovery (None: not discovered yet).
    capabilities = db.Column(db.JSON)
    # Seconds allowed to connect to the upstream, and to wait for (each part of) an answer.
    connect_timeout = db.Column(db.Float, nullable=False, default=5.0, server_default="5")
    read_timeout = db.Column(db.Float, nullable=False, default=30.0, server_default="30")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        db.CheckConstraint(
            "auth_type IN ('none', 'headers', 'oauth', 'per_user_headers', 'per_user_oauth')",
            name="auth_type"),
    )

    def header_names(self) -> list[str]:
        return sorted(self.shared_headers or {})

    def to_dict(self) -> dict:
        oauth = None
        if self.oauth_config:
            oauth = {k: v for k, v in self.oauth_config.items() if k != "client_secret"}
            oauth["client_secret_set"] = bool(self.oauth_config.get("client_secret"))
        return {
            "id": self.id, "name": self.name, "url": self.url, "auth_type": self.auth_type,
            "headers": self.header_names(),
            "per_user_header_keys": list(self.per_user_header_keys or []),
            "oauth": oauth,
            "allow_on_all_virtual_keys": self.allow_on_all_virtual_keys,
            "enabled": self.enabled,
            "tools": list(self.tools or []),
            "tools_refreshed_at": iso(self.tools_refreshed_at),
            "tools_discovered": self.tools_refreshed_at is not None,
            "connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }
