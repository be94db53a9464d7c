"""Consents and the refresh tokens issued under them: what ends them.

- revoking a consent (the person on Connected apps, an admin, the client through RFC 7009, a
  reused code or refresh token) rejects its refresh tokens at once and its access tokens as
  soon as the gateway's snapshot sees it (at once on this instance, within
  PORTCULLIS_CONFIG_CACHE_SECONDS on the others);
- the end of a dashboard login (log out) revokes the refresh tokens issued under it; a password
  change or reset, deactivation or deletion of the user revokes all of theirs. Access tokens
  then run out within PORTCULLIS_ACCESS_TOKEN_SECONDS, and starting a per-user credential flow
  with them is refused at once (the session gate: their ``sid`` is no longer an active login).
"""
from __future__ import annotations

from flask import current_app
from sqlalchemy import select, update

from ..extensions import db
from ..models import OAuthConsent, OAuthRefreshToken
from ..models.base import utcnow


def usable(consent: OAuthConsent) -> bool:
    """May this consent still be refreshed into new access tokens?"""
    if consent.revoked_at is not None or consent.user is None or not consent.user.active:
        return False
    if consent.mode == "session" and current_app.config["PORTCULLIS_ENFORCE_AUTH"]:
        return False
    return consent.login_id is not None


def revoke(consent: OAuthConsent, reason: str) -> None:
    """Revoke a consent and every refresh token of it (in the caller's transaction)."""
    now = utcnow()
    if consent.revoked_at is None:
        consent.revoked_at, consent.revoked_reason = now, reason[:64]
    db.session.execute(update(OAuthRefreshToken).where(
        OAuthRefreshToken.consent_id == consent.id, OAuthRefreshToken.revoked_at.is_(None)).values(revoked_at=now))


def end_refresh_tokens(*, user_id: int | None = None, login_ids=None) -> int:
    """Revoke the refresh tokens issued under these logins (or every login of the user)."""
    consents = select(OAuthConsent.id)
    if user_id is not None:
        consents = consents.where(OAuthConsent.user_id == user_id)
    elif login_ids:
        consents = consents.where(OAuthConsent.login_id.in_(list(login_ids)))
    else:
        return 0
    return db.session.execute(update(OAuthRefreshToken).where(
        OAuthRefreshToken.revoked_at.is_(None), OAuthRefreshToken.consent_id.in_(consents))
        .values(revoked_at=utcnow()).execution_options(synchronize_session=False)).rowcount


def for_access_token(token: str) -> OAuthConsent | None:
    """The consent of an access token signed by this server (any audience), for revocation."""
    from .tokens import grant_of

    grant = grant_of(token)
    return db.session.get(OAuthConsent, grant) if grant is not None else None


def live_refresh_tokens(consent_ids) -> set[int]:
    """Which of these consents still hold a refresh token that can be used."""
    if not consent_ids:
        return set()
    return set(db.session.scalars(select(OAuthRefreshToken.consent_id).where(
        OAuthRefreshToken.consent_id.in_(list(consent_ids)), OAuthRefreshToken.revoked_at.is_(None),
        OAuthRefreshToken.rotated_at.is_(None), OAuthRefreshToken.expires_at > utcnow())))
