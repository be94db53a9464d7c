"""The authorization server's part of the background clean-up (app/sweep.py runs it)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from ..extensions import db
from ..models import OAuthCode, OAuthConsent, OAuthRefreshToken, SigningKey


def sweep(now, retention_days: int, refresh_days: int) -> int:
    """What it no longer needs: codes a day after they expired (a reuse within that day is
    still recognised), expired refresh tokens, consents revoked longer ago than the retention
    or without any refresh token left for longer than a refresh token lives, and signing keys
    whose tokens have all expired. Returns how many rows went."""
    n = db.session.execute(delete(OAuthCode).where(OAuthCode.expires_at < now - timedelta(days=1))).rowcount
    n += db.session.execute(delete(OAuthRefreshToken).where(OAuthRefreshToken.expires_at < now)).rowcount
    idle = now - timedelta(days=refresh_days)
    n += db.session.execute(delete(OAuthConsent).where(
        (OAuthConsent.revoked_at < now - timedelta(days=retention_days))
        | ((OAuthConsent.created_at < idle) & (OAuthConsent.last_used_at < idle)
           & ~select(OAuthRefreshToken.id).where(OAuthRefreshToken.consent_id == OAuthConsent.id).exists()))
    ).rowcount
    n += db.session.execute(delete(SigningKey).where(SigningKey.remove_after < now)).rowcount
    return n
