"""Single sign-on: dashboard login through the team's OpenID provider (Authlib's Flask client).

Authlib does the protocol: discovery, ``state`` (kept in the signed session cookie), PKCE S256,
``nonce``, and the ID token's signature (the provider's JWKS), ``iss``, ``aud``, ``exp``,
``iat`` and ``at_hash``. This module holds the policy of who may sign in as whom:

1. an account already tied to this person (issuer + ``sub``) is theirs;
2. else an account with the same e-mail is taken over only when the provider says the address
   is verified and its domain is one of ``PORTCULLIS_OIDC_ALLOWED_DOMAINS`` (the domains the
   team's provider is the authority for), and the account is not tied to another person;
3. else a new member is created.

Every sign-in needs ``email_verified`` true and an allowed domain, and a deactivated account
is refused. With ``PORTCULLIS_OIDC_ADMIN_GROUPS`` set, the provider decides the role at every
sign-in: in one of those groups -> admin, otherwise -> member (a role set on the Users page
lasts until that person's next SSO sign-in).
"""
from __future__ import annotations

from dataclasses import dataclass

from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app
from sqlalchemy import func, select

from .audit import record
from .extensions import db
from .models import User
from .models.base import new_secret
from .ops.users import active_admins_besides, end_logins

HTTP_TIMEOUT = 10  # seconds for each request to the provider (discovery, JWKS, token, userinfo)
CALLBACK = "/login/sso/callback"


class Refused(Exception):
    """A sign-in the policy turns down; ``reason`` goes to the audit log and the page."""

    def __init__(self, reason: str, message: str, *, email: str = "", user: User | None = None):
        super().__init__(reason)
        self.reason, self.message, self.email, self.user = reason, message, email, user


@dataclass
class Identity:
    issuer: str
    subject: str
    email: str
    groups: list[str]


def init_app(app: Flask) -> None:
    if not app.config.get("PORTCULLIS_OIDC_ISSUER"):
        return
    oauth = OAuth(app)
    issuer = app.config["PORTCULLIS_OIDC_ISSUER"]
    secret = app.config["PORTCULLIS_OIDC_CLIENT_SECRET"]
    oauth.register(
        "sso",
        client_id=app.config["PORTCULLIS_OIDC_CLIENT_ID"],
        client_secret=secret,
        server_metadata_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": app.config["PORTCULLIS_OIDC_SCOPES"],
            "code_challenge_method": "S256",
            "default_timeout": HTTP_TIMEOUT,
            # no secret: a public client, PKCE alone binds the code to this login
            "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
        },
    )
    app.extensions["sso"] = oauth.sso


def client():
    """Authlib's client for the provider, or None when single sign-on is off."""
    return current_app.extensions.get("sso")


def redirect_uri() -> str:
    """Where the provider sends the person back (register exactly this at the provider)."""
    return current_app.config["PORTCULLIS_BASE_URL"] + CALLBACK


def check_issuer(metadata: dict, response_iss: str | None) -> None:
    """The discovery document must be the configured issuer's, and an ``iss`` in the
    authorization response (RFC 9207) must name it: another provider's answer is refused."""
    configured = current_app.config["PORTCULLIS_OIDC_ISSUER"].rstrip("/")
    if (metadata.get("issuer") or "").rstrip("/") != configured:
        raise Refused("issuer_mismatch", "The identity provider's configuration names another issuer.")
    if response_iss is not None and response_iss != metadata["issuer"]:
        raise Refused("issuer_mismatch", "The answer came from another identity provider.")


def identity_from(token: dict) -> Identity:
    """The person the validated ID token (and, for claims it lacks, the userinfo endpoint)
    describes. Refuses an unverified or missing e-mail."""
    claims = dict(token.get("userinfo") or {})
    if not claims.get("sub"):
        raise Refused("no_id_token", "The identity provider sent no ID token.")
    if "email" not in claims or "email_verified" not in claims or (
            current_app.config["PORTCULLIS_OIDC_ADMIN_GROUPS"] and "groups" not in claims):
        # Providers that follow OpenID strictly put these in userinfo only; its `sub` must match.
        more = client().userinfo(token=token)
        if more.get("sub") != claims["sub"]:
            raise Refused("userinfo_mismatch", "The identity provider's answers disagree.")
        claims = {**more, **claims}
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise Refused("no_email", "The identity provider gave no e-mail address for this account.")
    if claims.get("email_verified") is not True:
        raise Refused("email_unverified", "Your e-mail address is not verified at the identity provider.",
                      email=email.strip().lower())
    groups = claims.get("groups") or []
    if not isinstance(groups, list):
        groups = [groups]
    return Identity(issuer=claims.get("iss") or current_app.config["PORTCULLIS_OIDC_ISSUER"],
                    subject=str(claims["sub"])[:255], email=email.strip().lower(),
                    groups=[str(g) for g in groups])


def _domain_allowed(email: str) -> bool:
    return email.rpartition("@")[2] in current_app.config["PORTCULLIS_OIDC_ALLOWED_DOMAINS"]


def user_for(who: Identity) -> User:
    """The account ``who`` signs into (created, tied or found; role set from groups), or Refused.
    Records what it did; the caller commits."""
    if not _domain_allowed(who.email):
        raise Refused("domain_not_allowed", "Your e-mail domain may not sign in here.", email=who.email)
    user = db.session.scalar(select(User).where(User.sso_issuer == who.issuer, User.sso_subject == who.subject))
    if user is None:
        user = db.session.scalar(select(User).where(func.lower(User.email) == who.email))
        if user is not None and user.sso_subject is not None:
            raise Refused("account_tied_elsewhere", "This e-mail's account belongs to another sign-in.",
                          email=who.email, user=user)
    if user is not None and not user.active:
        raise Refused("deactivated", "Your account is deactivated.", email=who.email, user=user)
    if user is None or user.sso_subject is None:
        if user is None:
            user = User(email=who.email, role=_role_from(who.groups) or "member", active=True)
            user.set_password(new_secret("", 32))  # never told to anyone: this person signs in through SSO
            db.session.add(user)
            db.session.flush()
            record("user.create", user, f"first single sign-on, role={user.role}")
        else:
            record("user.sso_link", user, "tied to the identity provider's subject (verified e-mail)")
        user.sso_issuer, user.sso_subject = who.issuer, who.subject
        if user.must_change_password:
            # A printed one-time password never replaced: it stops working now, and so do the
            # logins made with it (as for any password change).
            user.set_password(new_secret("", 32))
            user.must_change_password = False
            end_logins(user)
    _apply_groups(user, who.groups)
    return user


def _role_from(groups: list[str]) -> str | None:
    """The role the provider's groups give, or None when roles are not the provider's to give
    (no PORTCULLIS_OIDC_ADMIN_GROUPS: they are managed on the Users page only)."""
    admin_groups = current_app.config["PORTCULLIS_OIDC_ADMIN_GROUPS"]
    if not admin_groups:
        return None
    return "admin" if set(groups) & set(admin_groups) else "member"


def _apply_groups(user: User, groups: list[str]) -> None:
    role = _role_from(groups)
    if role is None or role == user.role:
        return
    if user.is_admin and active_admins_besides(user) == 0:
        # The rule of app/ops/users.py holds here too: the last active admin is never demoted.
        record("user.role_change_refused", user, "left the admin groups, but is the last active admin")
        return
    record("user.role_change", user, f"{user.role} -> {role} (identity provider groups)")
    user.role = role
    end_logins(user)  # as for any role change (app/ops/users.py): every earlier login and API token ends
