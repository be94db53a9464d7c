"""Virtual keys (what agents present) and their grants."""
from __future__ import annotations

from ..extensions import db
from .base import digest, iso, new_secret, utcnow

SOURCES = ("dashboard", "api", "mcp")
SCOPES = ("read", "write")
KEY_PREFIX = "vk_"


class VirtualKey(db.Model):
    __tablename__ = "virtual_keys"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False)
    key_hash = db.Column(db.String(64), nullable=False, unique=True)
    key_prefix = db.Column(db.String(16), nullable=False)  # "vk_" + 8 chars, shown in lists
    owner_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    source = db.Column(db.String(16), nullable=False, default="dashboard")
    agent_id = db.Column(db.String(200))
    rate_limit_per_minute = db.Column(db.Integer, nullable=False, default=60)
    expires_at = db.Column(db.DateTime)
    active = db.Column(db.Boolean, nullable=False, default=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    last_used_at = db.Column(db.DateTime)

    owner = db.relationship("User")
    server_grants = db.relationship("VirtualKeyServerGrant", back_populates="virtual_key",
                                    cascade="all, delete-orphan", passive_deletes=True,
                                    order_by="VirtualKeyServerGrant.mcp_server_id")
    service_grants = db.relationship("VirtualKeyServiceGrant", back_populates="virtual_key",
                                     cascade="all, delete-orphan", passive_deletes=True,
                                     order_by="VirtualKeyServiceGrant.service_id")

    __table_args__ = (
        db.CheckConstraint("source IN ('dashboard', 'api', 'mcp')", name="source"),
        db.CheckConstraint("rate_limit_per_minute > 0", name="rate_limit_positive"),
        # ids are never reused (SQLite would reuse the highest one after a delete): an issued key
        # names its issuer by id, and caches and rate-limit budgets are keyed by id
        {"sqlite_autoincrement": True},
    )

    @classmethod
    def generate(cls, **fields) -> tuple[VirtualKey, str]:
        """A new key and its secret; the secret is returned once and only its hash is kept."""
        secret = new_secret(KEY_PREFIX, 32)
        return cls(key_hash=digest(secret), key_prefix=secret[:11], **fields), secret

    @staticmethod
    def hash_of(secret: str) -> str:
        return digest(secret)

    @property
    def status(self) -> str:
        """revoked, expired or active (the row's own state; the gateway also folds in the owner
        and issuers: app/access.py)."""
        from ..access import key_status

        return key_status(self.active, self.expires_at, utcnow())

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "key_prefix": self.key_prefix,
            "owner_id": self.owner_id, "source": self.source, "agent_id": self.agent_id,
            "mcp_servers": [{"server_id": g.mcp_server_id, "tools": g.tools} for g in self.server_grants],
            "services": [{"service_id": g.service_id, "scope": g.scope} for g in self.service_grants],
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "expires_at": iso(self.expires_at), "active": self.active, "status": self.status,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "last_used_at": iso(self.last_used_at),
        }


class VirtualKeyServerGrant(db.Model):
    """A key's access to an MCP server; ``tools`` is an allowlist of tool names (null = all)."""

    __tablename__ = "virtual_key_server_grants"

    id = db.Column(db.Integer, primary_key=True)
    virtual_key_id = db.Column(db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE"), nullable=False)
    mcp_server_id = db.Column(db.Integer, db.ForeignKey("mcp_servers.id", ondelete="CASCADE"),
                              nullable=False, index=True)
    tools = db.Column(db.JSON)

    virtual_key = db.relationship("VirtualKey", back_populates="server_grants")
    mcp_server = db.relationship("McpServer")

    __table_args__ = (db.UniqueConstraint("virtual_key_id", "mcp_server_id", name="uq_vk_server_grant"),)


class VirtualKeyServiceGrant(db.Model):
    """A key's access to an HTTP service through the proxy, ``read`` (GET/HEAD/OPTIONS) or ``write``."""

    __tablename__ = "virtual_key_service_grants"

    id = db.Column(db.Integer, primary_key=True)
    virtual_key_id = db.Column(db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE"), nullable=False)
    service_id = db.Column(db.Integer, db.ForeignKey("services.id", ondelete="CASCADE"), nullable=False, index=True)
    scope = db.Column(db.String(8), nullable=False, default="read")

    virtual_key = db.relationship("VirtualKey", back_populates="service_grants")
    service = db.relationship("Service")

    __table_args__ = (
        db.UniqueConstraint("virtual_key_id", "service_id", name="uq_vk_service_grant"),
        db.CheckConstraint("scope IN ('read', 'write')", name="scope"),
    )
