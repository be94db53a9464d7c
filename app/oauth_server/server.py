"""The OAuth 2.1 protocol, by Authlib: the authorization code grant with PKCE (S256 only) and
RFC 8707 resources, refresh tokens rotated on every use with reuse detection (RFC 9700),
revocation (RFC 7009), dynamic client registration (RFC 7591) and the ``iss`` authorization
response parameter (RFC 9207). What Authlib leaves to the application lives here: storage of
codes, consents and refresh tokens, and JWT access tokens (app/oauth_server/tokens.py).

A consent (OAuthConsent) is created by a code's first exchange; its refresh tokens form one
family. Reusing a code or a rotated refresh token revokes that consent, which rejects its
refresh tokens at once and its access tokens on every instance (the gateway checks the consent
of each token against its snapshot).
"""
from __future__ import annotations

from datetime import timedelta

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import current_app, request
from sqlalchemy import select, update

from ..audit import record
from ..extensions import db
from ..models import OAuthClient, OAuthCode, OAuthConsent, OAuthRefreshToken
from ..models.base import digest, utcnow
from . import clients, consents, tokens
from .metadata import resource_allowed

CODE_TTL = timedelta(seconds=60)


class Grantee:
    """What the person chose on the consent page, handed to Authlib as its ``user``."""

    def __init__(self, user, login_id: int, mode: str, key_id: int | None, resource: str):
        self.user, self.login_id, self.mode, self.key_id, self.resource = user, login_id, mode, key_id, resource

    def get_user_id(self):
        return self.user.id


class S256Only(CodeChallenge):
    """PKCE is required on every authorization request, with S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256",
                                      redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256", redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code):
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code):
        return authorization_code.code_challenge_method


def _requested_resource(req, default: str | None = None) -> str | None:
    values = req.payload.datalist.get("resource", []) if hasattr(req.payload, "datalist") else []
    if len(values) > 1:
        raise InvalidRequestError("one resource per request")
    return values[0] if values else default


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(clients.AUTH_METHODS)

    def validate_authorization_request(self):
        redirect_uri = super().validate_authorization_request()
        resource = _requested_resource(self.request, metadata_resource())
        if not resource_allowed(resource):
            raise InvalidRequestError("resource must be one of this server's MCP endpoints (RFC 8707)",
                                      redirect_uri=redirect_uri)
        self.request.resource = resource
        return redirect_uri

    def save_authorization_code(self, code, req):
        grantee: Grantee = req.user
        db.session.add(OAuthCode(
            code_hash=digest(code), client_pk=req.client.id, user_id=grantee.user.id, login_id=grantee.login_id,
            mode=grantee.mode, virtual_key_id=grantee.key_id, redirect_uri=req.payload.redirect_uri,
            scope=req.scope, resource=grantee.resource, code_challenge=req.payload.data["code_challenge"],
            code_challenge_method="S256", expires_at=utcnow() + CODE_TTL))

    def validate_token_request(self):
        super().validate_token_request()
        code: OAuthCode = self.request.authorization_code
        resource = _requested_resource(self.request)
        if resource is not None and resource != code.resource:
            raise InvalidGrantError("resource does not match the authorization request")

    def query_authorization_code(self, code, client):
        row = db.session.scalar(select(OAuthCode).where(OAuthCode.code_hash == digest(code)))
        if row is None or row.client_pk != client.id:
            return None
        if row.used_at is not None:
            _reused_code(row)
            return None
        if row.expires_at <= utcnow():
            return None
        return row

    def authenticate_user(self, code: OAuthCode):
        """The code's first (and only) exchange creates the consent its tokens belong to."""
        now = utcnow()
        won = db.session.execute(update(OAuthCode).where(OAuthCode.id == code.id, OAuthCode.used_at.is_(None))
                                 .values(used_at=now)).rowcount
        if not won:  # exchanged concurrently: a reuse
            db.session.rollback()
            row = db.session.get(OAuthCode, code.id)
            if row is not None:
                _reused_code(row)
            raise InvalidGrantError("the authorization code was already used")
        consent = OAuthConsent(client_pk=code.client_pk, user_id=code.user_id, mode=code.mode,
                               virtual_key_id=code.virtual_key_id, login_id=code.login_id, scope=code.scope,
                               resource=code.resource, last_used_at=now)
        db.session.add(consent)
        db.session.flush()
        db.session.execute(update(OAuthCode).where(OAuthCode.id == code.id).values(consent_id=consent.id))
        return consent

    def delete_authorization_code(self, code):
        pass  # kept, marked used, until the sweeper removes it: a second use must be recognised


def _reused_code(row: OAuthCode) -> None:
    """RFC 6749 §4.1.2: a code used twice revokes what its first use issued."""
    if row.consent_id is not None:
        consent = db.session.get(OAuthConsent, row.consent_id)
        if consent is not None and consent.revoked_at is None:
            consents.revoke(consent, "code_reused")
            record("oauth.code_reuse", consent.client, f"consent {consent.id} revoked: its code was used twice",
                   target_name=consent.client.client_name or consent.client.client_id[:200])
            db.session.commit()


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(clients.AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self):
        super().validate_token_request()
        resource = _requested_resource(self.request)
        if resource is not None and resource != self.request.refresh_token.consent.resource:
            raise InvalidGrantError("resource does not match the consent")

    def authenticate_refresh_token(self, refresh_token):
        """The token, claimed for this request (a conditional update, so two instances never
        spend it twice); None when unknown, expired or revoked. A rotated token presented
        again revokes its whole family."""
        row = db.session.scalar(select(OAuthRefreshToken).where(
            OAuthRefreshToken.token_hash == digest(refresh_token)))
        if row is None:
            return None
        consent = row.consent
        if row.rotated_at is not None:
            if consent.revoked_at is None:
                consents.revoke(consent, "refresh_token_reused")
                record("oauth.refresh_reuse", consent.client,
                       f"consent {consent.id} revoked: a rotated refresh token was presented again",
                       target_name=consent.client.client_name or consent.client.client_id[:200])
                db.session.commit()
            return None
        now = utcnow()
        if row.revoked_at is not None or row.expires_at <= now or not consents.usable(consent):
            return None
        won = db.session.execute(update(OAuthRefreshToken).where(
            OAuthRefreshToken.id == row.id, OAuthRefreshToken.rotated_at.is_(None)).values(rotated_at=now)).rowcount
        if not won:
            db.session.rollback()
            return self.authenticate_refresh_token(refresh_token)  # now seen as rotated: a reuse
        return row

    def authenticate_user(self, refresh_token: OAuthRefreshToken):
        consent = refresh_token.consent
        # a statement, not an ORM change: a refresh must not replace every instance's snapshot
        db.session.execute(update(OAuthConsent).where(OAuthConsent.id == consent.id).values(last_used_at=utcnow()))
        return consent

    def revoke_old_credential(self, refresh_token):
        pass  # already marked rotated when it was claimed


class Revocation(RevocationEndpoint):
    """RFC 7009. Revoking a refresh token or an access token revokes its consent: every token
    of that authorization stops working."""

    CLIENT_AUTH_METHODS = list(clients.AUTH_METHODS)

    def query_token(self, token_string, token_type_hint):
        if token_type_hint != "access_token":
            row = db.session.scalar(select(OAuthRefreshToken).where(
                OAuthRefreshToken.token_hash == digest(token_string)))
            if row is not None:
                return row
        if tokens.looks_like_jwt(token_string):
            consent = consents.for_access_token(token_string)
            if consent is not None:
                return _ConsentToken(consent)
        return None

    def revoke_token(self, token, req):
        consent = token.consent
        if consent.revoked_at is None:
            consents.revoke(consent, "revoked_by_client")
            record("oauth.revoke", consent.client, f"consent {consent.id} revoked by the client",
                   target_name=consent.client.client_name or consent.client.client_id[:200])
        db.session.commit()


class _ConsentToken:
    def __init__(self, consent: OAuthConsent):
        self.consent = consent

    def check_client(self, client) -> bool:
        return self.consent.client_pk == client.id


class Registration(ClientRegistrationEndpoint):
    """RFC 7591, open to anyone (rate limited per address): redirect URIs must be HTTPS or
    loopback HTTP; public clients (``none``) get no secret."""

    def authenticate_token(self, req):
        return True  # open registration, as MCP clients expect

    def get_server_metadata(self):
        from .metadata import authorization_server

        return authorization_server()

    def extract_client_metadata(self, req):
        data = req.payload.data
        if not isinstance(data, dict):
            raise clients.InvalidClientMetadata("the body must be a JSON object")
        return clients.validate_metadata(data)

    def generate_client_secret(self, req):
        method = (req.payload.data or {}).get("token_endpoint_auth_method", "none")
        return None if method == "none" else generate_token(48)

    def generate_client_info(self, req):
        info = super().generate_client_info(req)
        if info["client_secret"] is None:
            info.pop("client_secret")
            info.pop("client_secret_expires_at")
        return info

    def save_client(self, client_info, client_metadata, req):
        secret = client_info.get("client_secret")
        client = OAuthClient(
            client_id=client_info["client_id"], kind="dcr", client_name=client_metadata.get("client_name", ""),
            client_uri=client_metadata.get("client_uri"), redirect_uris=client_metadata["redirect_uris"],
            grant_types=client_metadata["grant_types"], response_types=client_metadata["response_types"],
            token_endpoint_auth_method=client_metadata["token_endpoint_auth_method"],
            client_secret_hash=digest(secret) if secret else None, scope="mcp",
            registered_from=(request.remote_addr or "")[:64])
        db.session.add(client)
        db.session.flush()
        record("oauth_client.register", client, f"redirect_uris={len(client.redirect_uris)}, "
                                                f"auth={client.token_endpoint_auth_method}",
               target_name=client.client_name or client.client_id)
        db.session.commit()
        return client


class Issuer(IssuerParameter):
    def get_issuer(self) -> str:
        return current_app.config["PORTCULLIS_BASE_URL"]


class JWTGenerator:
    """Authlib's token generator: a JWT access token for the consent (``user``) and a new
    refresh token."""

    def __call__(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        consent: OAuthConsent = user
        access, lifetime = tokens.issue(
            user_id=consent.user_id, mode=consent.mode, key_id=consent.virtual_key_id, grant_id=consent.id,
            login_id=consent.login_id, client_id=client.client_id, scope=consent.scope, resource=consent.resource)
        token = {"token_type": "Bearer", "access_token": access, "expires_in": lifetime, "scope": consent.scope}
        if include_refresh_token and "refresh_token" in (client.grant_types or []):
            token["refresh_token"] = generate_token(48)
        return token


def _save_token(token: dict, req) -> None:
    consent: OAuthConsent = req.user
    refresh = token.get("refresh_token")
    if refresh:
        days = current_app.config["PORTCULLIS_REFRESH_TOKEN_DAYS"]
        db.session.add(OAuthRefreshToken(token_hash=digest(refresh), consent_id=consent.id,
                                         expires_at=utcnow() + timedelta(days=days)))
    req.client.last_used_at = utcnow()
    db.session.commit()


def metadata_resource() -> str:
    from .metadata import resource_url

    return resource_url(None)


def create_server(app) -> AuthorizationServer:
    server = AuthorizationServer()
    server.init_app(app, query_client=clients.find, save_token=_save_token)
    server.scopes_supported = ["mcp"]
    server.register_token_generator("default", JWTGenerator())
    server.register_grant(CodeGrant, [S256Only(required=True)])
    server.register_grant(RefreshGrant)
    server.register_endpoint(Revocation)
    server.register_endpoint(Registration)
    server.register_extension(Issuer())
    return server

