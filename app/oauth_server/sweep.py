"""The authorization server's part of the background clean-up (app/sweep.py runs it)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from ..extensions import db
from ..models import OAuthClient, OAuthCode, OAuthConsent, OAuthRefreshToken, SigningKey

UNUSED_CLIENT_DAYS = 1  # a registered client that never got a token is forgotten after this


def sweep(now, retention_days: int, refresh_days: int) -> int:
    """What it no longer needs: codes a day after they expired (a reuse within that day is
    still recognised), expired refresh tokens, consents revoked longer ago than the retention
    or without any refresh token left for longer than a refresh token lives, registered clients
    that never obtained a token within a day (registration is open: abandoned ones must not pile
    up), and signing keys whose tokens have all expired. Returns how many rows went."""
    n = db.session.execute(delete(OAuthCode).where(OAuthCode.expires_at < now - timedelta(days=1))).rowcount
    n += db.session.execute(delete(OAuthRefreshToken).where(OAuthRefreshToken.expires_at < now)).rowcount
    idle = now - timedelta(days=refresh_days)
    n += db.session.execute(delete(OAuthConsent).where(
        (OAuthConsent.revoked_at < now - timedelta(days=retention_days))
        | ((OAuthConsent.created_at < idle) & (OAuthConsent.last_used_at < idle)
           & ~select(OAuthRefreshToken.id).where(OAuthRefreshToken.consent_id == OAuthConsent.id).exists()))
    ).rowcount
    n += db.session.execute(delete(OAuthClient).where(
        OAuthClient.kind == "dcr", OAuthClient.last_used_at.is_(None),
        OAuthClient.created_at < now - timedelta(days=UNUSED_CLIENT_DAYS),
        ~select(OAuthConsent.id).where(OAuthConsent.client_pk == OAuthClient.id).exists(),
        ~select(OAuthCode.id).where(OAuthCode.client_pk == OAuthClient.id).exists())).rowcount
    n += db.session.execute(delete(SigningKey).where(SigningKey.remove_after < now)).rowcount
    return n
