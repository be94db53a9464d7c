"""People, their dashboard sessions and personal API tokens."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from functools import cache

from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from .base import digest, iso, new_secret, utcnow

ROLES = ("admin", "member")
TOKEN_PREFIX = "pct_"


@cache
def dummy_password_hash() -> str:
    """The hash of a random password, made like every real one (same method and cost), once per
    process: a login for an unknown e-mail is verified against it and costs what a real one costs."""
    return generate_password_hash(secrets.token_urlsafe(16))


class User(db.Model):
    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(254), nullable=False, unique=True)
    password_hash = db.Column(db.String(256), nullable=False)
    role = db.Column(db.String(16), nullable=False, default="member")
    active = db.Column(db.Boolean, nullable=False, default=True)
    # Set for a generated first-run password: the next dashboard login must choose a new one.
    must_change_password = db.Column(db.Boolean, nullable=False, default=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    last_login_at = db.Column(db.DateTime)
    # The person at the team's OpenID provider this account belongs to (single sign-on, app/sso.py):
    # the provider's issuer and its stable `sub` for them, set at the first SSO sign-in.
    sso_issuer = db.Column(db.String(255))
    sso_subject = db.Column(db.String(255))

    __table_args__ = (db.CheckConstraint("role IN ('admin', 'member')", name="role"),
                      db.UniqueConstraint("sso_issuer", "sso_subject", name="uq_users_sso_identity"))

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict:
        return {
            "id": self.id, "email": self.email, "role": self.role, "active": self.active,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "last_login_at": iso(self.last_login_at),
        }


class Login(db.Model):
    """A dashboard login (table ``dashboard_sessions``): the signed cookie holds only a random
    token whose hash is stored here. Called a login, not a session, in the code: "session" is
    the MCP session of an agent, and the product's list of credentials is named sessions."""

    __tablename__ = "dashboard_sessions"

    id = db.Column(db.Integer, primary_key=True)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime, nullable=False)
    last_seen_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    revoked_at = db.Column(db.DateTime)
    ip = db.Column(db.String(64))
    user_agent = db.Column(db.String(256))

    user = db.relationship("User", lazy="joined")

    @classmethod
    def start(cls, user: User, hours: int, ip: str | None, user_agent: str | None) -> tuple[Login, str]:
        token = new_secret("", 32)
        row = cls(token_hash=digest(token), user=user, expires_at=utcnow() + timedelta(hours=hours),
                  ip=(ip or "")[:64], user_agent=(user_agent or "")[:256])
        return row, token

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now and self.user.active


class ApiToken(db.Model):
    """A personal bearer token for the JSON API (``pct_`` + 32 random bytes, hashed)."""

    __tablename__ = "api_tokens"

    id = db.Column(db.Integer, primary_key=True)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    prefix = db.Column(db.String(16), nullable=False)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime, nullable=False)
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)

    user = db.relationship("User", lazy="joined")

    @classmethod
    def issue(cls, user: User, hours: int) -> tuple[ApiToken, str]:
        token = new_secret(TOKEN_PREFIX, 32)
        row = cls(token_hash=digest(token), prefix=token[:12], user=user,
                  expires_at=utcnow() + timedelta(hours=hours))
        return row, token

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now and self.user.active

    def to_dict(self) -> dict:
        """Never the token itself (only its hash is stored): its prefix tells it apart."""
        return {
            "id": self.id, "user_id": self.user_id, "prefix": self.prefix,
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at), "revoked_at": iso(self.revoked_at),
            "active": self.usable(utcnow()),
        }
