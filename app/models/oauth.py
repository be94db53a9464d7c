"""Portcullis as an OAuth 2.1 authorization server for its own /mcp: registered clients, the
consents people give them, authorization codes, refresh tokens and the keys that sign access
tokens.

Access tokens are JWTs and are not stored. A consent (``portcullis_grant`` in every token) is
what the gateway checks on each call: revoking it rejects its refresh tokens and its access
tokens. Codes and refresh tokens are stored as SHA-256 hashes only; the private part of a
signing key is encrypted at rest.
"""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from ..crypto import EncryptedText
from ..extensions import db
from .base import digest, iso, utcnow

CLIENT_KINDS = ("dcr", "cimd")  # dynamically registered, or a client ID metadata document
CONSENT_MODES = ("user", "vk", "session")
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")


def _host(netloc: str) -> str:
    host, sep, port = netloc.rpartition(":")
    return host if sep and port.isdigit() else netloc


def loopback_redirect(uri: str) -> bool:
    """An http redirect to this machine (RFC 8252 native apps), whose port may vary."""
    parts = urlsplit(uri)
    return parts.scheme == "http" and _host(parts.netloc) in LOOPBACK_HOSTS


def _without_port(uri: str) -> tuple:
    parts = urlsplit(uri)
    return parts.scheme, _host(parts.netloc), parts.path, parts.query


class OAuthClient(db.Model):
    __tablename__ = "oauth_clients"

    id = db.Column(db.Integer, primary_key=True)
    # Random for registered clients; the HTTPS URL of the metadata document for CIMD clients.
    client_id = db.Column(db.String(2048), nullable=False, unique=True)
    kind = db.Column(db.String(8), nullable=False, default="dcr")
    client_name = db.Column(db.String(200), nullable=False, default="")
    client_uri = db.Column(db.String(2048))
    redirect_uris = db.Column(db.JSON, nullable=False, default=list)
    grant_types = db.Column(db.JSON, nullable=False, default=list)
    response_types = db.Column(db.JSON, nullable=False, default=list)
    token_endpoint_auth_method = db.Column(db.String(32), nullable=False, default="none")
    client_secret_hash = db.Column(db.String(64))  # confidential clients only
    scope = db.Column(db.String(200), nullable=False, default="mcp")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    fetched_at = db.Column(db.DateTime)  # CIMD: when the document was last read
    last_used_at = db.Column(db.DateTime)
    registered_from = db.Column(db.String(64))  # the address that registered it (DCR)

    __table_args__ = (
        db.CheckConstraint("kind IN ('dcr', 'cimd')", name="kind"),
        db.CheckConstraint(
            "token_endpoint_auth_method IN ('none', 'client_secret_basic', 'client_secret_post')",
            name="auth_method"),
    )

    # -- Authlib's ClientMixin -------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self):
        return None  # every authorization request names its redirect URI

    def get_allowed_scope(self, scope):
        return "mcp" if not scope else " ".join(s for s in scope.split() if s == "mcp")

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exactly one of the registered URIs; a loopback one with any port (RFC 8252 §7.3)."""
        if redirect_uri in (self.redirect_uris or []):
            return True
        if not loopback_redirect(redirect_uri):
            return False
        wanted = _without_port(redirect_uri)
        return any(loopback_redirect(r) and _without_port(r) == wanted for r in self.redirect_uris or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.client_secret_hash) and hmac.compare_digest(digest(client_secret), self.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "code" in (self.response_types or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.grant_types or [])

    def to_dict(self) -> dict:
        return {
            "id": self.id, "client_id": self.client_id, "kind": self.kind, "client_name": self.client_name,
            "client_uri": self.client_uri, "redirect_uris": list(self.redirect_uris or []),
            "grant_types": list(self.grant_types or []),
            "token_endpoint_auth_method": self.token_endpoint_auth_method, "scope": self.scope,
            "created_at": iso(self.created_at), "fetched_at": iso(self.fetched_at),
            "last_used_at": iso(self.last_used_at),
        }


class OAuthConsent(db.Model):
    """One authorization a person gave one client: as whom it acts (``mode``; ``vk``: which of
    their keys), for which resource and scopes, from which dashboard login. Its refresh tokens
    form one family (rotated on every use)."""

    __tablename__ = "oauth_consents"

    id = db.Column(db.Integer, primary_key=True)
    client_pk = db.Column(db.Integer, db.ForeignKey("oauth_clients.id", ondelete="CASCADE"), nullable=False,
                          index=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    mode = db.Column(db.String(16), nullable=False)
    virtual_key_id = db.Column(db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE"), index=True)
    # The dashboard login that consented (the token's ``sid``); kept when that login ends.
    login_id = db.Column(db.Integer, db.ForeignKey("dashboard_sessions.id", ondelete="SET NULL"), index=True)
    scope = db.Column(db.String(200), nullable=False)
    resource = db.Column(db.String(2048), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)
    revoked_reason = db.Column(db.String(64))

    client = db.relationship("OAuthClient", lazy="joined")
    user = db.relationship("User")
    virtual_key = db.relationship("VirtualKey")

    __table_args__ = (
        db.CheckConstraint("mode IN ('user', 'vk', 'session')", name="mode"),
        db.CheckConstraint("(mode = 'vk') = (virtual_key_id IS NOT NULL)", name="key_iff_vk"),
    )


class OAuthCode(db.Model):
    """An authorization code (hashed): single use, short-lived, bound to the client, the
    redirect URI, the PKCE challenge and the resource. ``consent_id`` is set by its first
    exchange, so that a second use can revoke what the first issued."""

    __tablename__ = "oauth_codes"

    id = db.Column(db.Integer, primary_key=True)
    code_hash = db.Column(db.String(64), nullable=False, unique=True)
    client_pk = db.Column(db.Integer, db.ForeignKey("oauth_clients.id", ondelete="CASCADE"), nullable=False)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    login_id = db.Column(db.Integer, db.ForeignKey("dashboard_sessions.id", ondelete="SET NULL"))
    mode = db.Column(db.String(16), nullable=False)
    virtual_key_id = db.Column(db.Integer, db.ForeignKey("virtual_keys.id", ondelete="CASCADE"))
    redirect_uri = db.Column(db.String(2048), nullable=False)
    scope = db.Column(db.String(200), nullable=False)
    resource = db.Column(db.String(2048), nullable=False)
    code_challenge = db.Column(db.String(128), nullable=False)
    code_challenge_method = db.Column(db.String(8), nullable=False, default="S256")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime, nullable=False, index=True)
    used_at = db.Column(db.DateTime)
    consent_id = db.Column(db.Integer, db.ForeignKey("oauth_consents.id", ondelete="SET NULL"))

    client = db.relationship("OAuthClient")

    # Authlib's AuthorizationCodeMixin
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self):
        return None

    def get_auth_time(self):
        return None


class OAuthRefreshToken(db.Model):
    """A refresh token (hashed). Rotated on every use: the used one keeps ``rotated_at``, and
    presenting it again revokes the whole consent (RFC 9700 reuse detection)."""

    __tablename__ = "oauth_refresh_tokens"

    id = db.Column(db.Integer, primary_key=True)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    consent_id = db.Column(db.Integer, db.ForeignKey("oauth_consents.id", ondelete="CASCADE"), nullable=False,
                           index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime, nullable=False, index=True)
    rotated_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)

    consent = db.relationship("OAuthConsent", lazy="joined")

    # Authlib's TokenMixin (refresh grant, revocation)
    def check_client(self, client) -> bool:
        return self.consent.client_pk == client.id

    def get_scope(self) -> str:
        return self.consent.scope


class SigningKey(db.Model):
    """An RSA key that signs access tokens. The newest unretired key signs; a retired key stays
    published (and accepted) until ``remove_after``, when every token it signed has expired."""

    __tablename__ = "signing_keys"

    id = db.Column(db.Integer, primary_key=True)
    kid = db.Column(db.String(64), nullable=False, unique=True)  # RFC 7638 thumbprint
    private_pem = db.Column(EncryptedText("signing_keys.private_pem"), nullable=False)
    public_jwk = db.Column(db.JSON, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    retired_at = db.Column(db.DateTime)
    remove_after = db.Column(db.DateTime)
