"""Per-binding credentials (what one person, key or session supplied for one MCP server) and the
pending flows that create them.

A binding is ``(auth_mode, identity, mcp_server)``: ``user`` (identity = user id), ``vk``
(identity = virtual key id) or ``session`` (identity = MCP session id, development mode only).
The database holds at most one credential and at most one pending flow per binding (partial
unique indexes per mode, on SQLite and PostgreSQL alike).
"""
from __future__ import annotations

from datetime import timedelta

from ..crypto import EncryptedJSON
from ..extensions import db
from .base import iso, utcnow

AUTH_MODES = ("user", "vk", "session")
# needs_reauth: an OAuth credential whose refresh the upstream refused for good (invalid_grant)
STATUSES = ("active", "needs_update", "orphaned", "needs_reauth")
AUTH_KINDS = ("headers", "oauth")
FLOW_KINDS = ("headers", "oauth")
FLOW_TTL = timedelta(minutes=15)

# Exactly the identity column of the mode is set.
_BINDING_CHECK = (
    "(auth_mode = 'user' AND user_id IS NOT NULL AND virtual_key_id IS NULL AND session_id IS NULL)"
    " OR (auth_mode = 'vk' AND virtual_key_id IS NOT NULL AND user_id IS NULL AND session_id IS NULL)"
    " OR (auth_mode = 'session' AND session_id IS NOT NULL AND user_id IS NULL AND virtual_key_id IS NULL)"
)
IDENTITY_COLUMN = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}


def _binding_columns():
    return (
        db.Column("auth_mode", db.String(16), nullable=False),
        db.Column("user_id", db.Integer, db.ForeignKey("users.id", ondelete="CASCADE")),
        db.Column("virtual_key_id", db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE")),
        db.Column("session_id", db.String(64), db.ForeignKey("mcp_sessions.id", ondelete="CASCADE")),
        db.Column("mcp_server_id", db.Integer, db.ForeignKey("mcp_servers.id", ondelete="CASCADE"),
                  nullable=False),
    )


def _unique_per_mode(table: str, where_extra: str = "") -> tuple:
    out = []
    for mode, col in IDENTITY_COLUMN.items():
        cond = db.text(f"auth_mode = '{mode}'{where_extra}")
        out.append(db.Index(f"uq_{table}_{mode}_binding", col, "mcp_server_id", unique=True,
                            sqlite_where=cond, postgresql_where=cond))
    return tuple(out)


class BindingMixin:
    def binding(self) -> tuple:
        return (self.auth_mode, self.identity, self.mcp_server_id)

    @property
    def identity(self):
        return getattr(self, IDENTITY_COLUMN[self.auth_mode])


class Credential(BindingMixin, db.Model):
    __tablename__ = "credentials"

    id = db.Column(db.Integer, primary_key=True)
    auth_mode, user_id, virtual_key_id, session_id, mcp_server_id = _binding_columns()
    auth_kind = db.Column(db.String(16), nullable=False, default="headers")
    status = db.Column(db.String(16), nullable=False, default="active")
    # headers: {header name (canonical, lower-case): value}, the values as typed, never trimmed;
    # oauth: the upstream's token response ({access_token, refresh_token, token_type, ...}).
    values = db.Column(EncryptedJSON("credentials.values"), nullable=False)
    # The header names stored (canonical, sorted), readable without decrypting anything.
    header_keys = db.Column(db.JSON, nullable=False, default=list)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    status_changed_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # oauth: when the access token expires (None: the upstream did not say) and the scopes granted
    expires_at = db.Column(db.DateTime)
    scopes = db.Column(db.JSON)
    # oauth: a refresh in progress holds this lease until then (a conditional UPDATE takes it;
    # see app/upstream_oauth/refresh.py), so two instances never spend one refresh token twice
    refresh_lease_until = db.Column(db.DateTime)

    __table_args__ = (
        db.CheckConstraint("auth_mode IN ('user', 'vk', 'session')", name="auth_mode"),
        db.CheckConstraint(_BINDING_CHECK, name="binding"),
        db.CheckConstraint("auth_kind IN ('headers', 'oauth')", name="auth_kind"),
        db.CheckConstraint("status IN ('active', 'needs_update', 'orphaned', 'needs_reauth')", name="status"),
        db.Index("ix_credentials_mcp_server_id", "mcp_server_id"),
        # the sessions list: newest first, paginated in the database (migration 0004)
        db.Index("ix_credentials_created_at_id", "created_at", "id"),
        # ... whose pending flows are hidden while their binding has an active credential
        db.Index("ix_credentials_active_user_binding", "user_id", "mcp_server_id",
                 sqlite_where=db.text("auth_mode = 'user' AND status = 'active'"),
                 postgresql_where=db.text("auth_mode = 'user' AND status = 'active'")),
        *_unique_per_mode("credentials"),
    )

    def to_dict(self) -> dict:
        """Names only: a stored value never leaves the server."""
        return {"id": self.id, "auth_mode": self.auth_mode, "user_id": self.user_id,
                "virtual_key_id": self.virtual_key_id, "mcp_server_id": self.mcp_server_id,
                "auth_kind": self.auth_kind, "status": self.status,
                "header_keys": list(self.header_keys or []),
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at)}


class Flow(BindingMixin, db.Model):
    """A pending step that creates a credential (a header submission), one pending per binding.

    ``id`` is random and url-safe (it is in the submit URL). ``token_hash`` is the SHA-256 of the
    temp token of ``vk``/``session`` flows (the token itself travels only in the URL fragment);
    ``user`` flows have none (the dashboard login proves who submits). A completed flow keeps no
    token and is marked ``used`` (so its link answers 410) until the sweeper removes it.
    """

    __tablename__ = "flows"

    id = db.Column(db.String(64), primary_key=True)
    kind = db.Column(db.String(16), nullable=False, default="headers")
    auth_mode, user_id, virtual_key_id, session_id, mcp_server_id = _binding_columns()
    status = db.Column(db.String(16), nullable=False, default="pending")
    token_hash = db.Column(db.String(64))
    # oauth flows: the PKCE verifier, the state and what the callback needs, encrypted
    oauth = db.Column(EncryptedJSON("flows.oauth"))
    expires_at = db.Column(db.DateTime, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        db.CheckConstraint("kind IN ('headers', 'oauth')", name="kind"),
        db.CheckConstraint("auth_mode IN ('user', 'vk', 'session')", name="auth_mode"),
        db.CheckConstraint(_BINDING_CHECK, name="binding"),
        db.CheckConstraint("status IN ('pending', 'used')", name="status"),
        db.Index("ix_flows_mcp_server_id", "mcp_server_id"),
        db.Index("ix_flows_expires_at", "expires_at"),
        db.Index("ix_flows_created_at_id", "created_at", "id"),
        *_unique_per_mode("flows", " AND status = 'pending'"),
    )

    def expired(self, now=None) -> bool:
        return self.expires_at <= (now or utcnow())
