"""OAuth clients (admins) and consents, "Connected apps" (everyone their own; admins all):
listing, deleting, revoking. Shared by the API and the pages."""
from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import joinedload

from ..audit import record
from ..extensions import db
from ..models import OAuthClient, OAuthConsent, User, VirtualKey
from ..models.base import iso
from ..oauth_server import consents as consent_store
from .errors import NotFound
from .fields import valid_id


def clients_query(term: str = ""):
    q = select(OAuthClient).order_by(OAuthClient.id.desc())
    if term:
        low = term.lower()
        q = q.where(or_(func.lower(OAuthClient.client_name).contains(low, autoescape=True),
                        func.lower(OAuthClient.client_id).contains(low, autoescape=True)))
    return q


def get_client(client_pk) -> OAuthClient:
    client = db.session.get(OAuthClient, client_pk) if valid_id(client_pk) else None
    if client is None:
        raise NotFound("no such OAuth client")
    return client


def delete_client(client: OAuthClient) -> None:
    """The client, its consents and their tokens (a metadata-document client may sign in
    again later: its document is then read anew)."""
    record("oauth_client.delete", client, target_name=client.client_name or client.client_id[:200])
    db.session.delete(client)


def consents_query(viewer, term: str = ""):
    """Live consents the viewer may see: their own; an admin's, everyone's."""
    q = (select(OAuthConsent).where(OAuthConsent.revoked_at.is_(None))
         .options(joinedload(OAuthConsent.client), joinedload(OAuthConsent.user), joinedload(OAuthConsent.virtual_key))
         .order_by(OAuthConsent.id.desc()))
    if not viewer.is_admin:
        q = q.where(OAuthConsent.user_id == viewer.id)
    if term:
        low = term.lower()
        q = q.join(OAuthClient, OAuthClient.id == OAuthConsent.client_pk).join(User, User.id == OAuthConsent.user_id) \
            .where(or_(func.lower(OAuthClient.client_name).contains(low, autoescape=True),
                       func.lower(User.email).contains(low, autoescape=True)))
    return q


def get_consent(viewer, consent_id) -> OAuthConsent:
    consent = db.session.get(OAuthConsent, consent_id) if valid_id(consent_id) else None
    if consent is None or consent.revoked_at is not None or (not viewer.is_admin and consent.user_id != viewer.id):
        raise NotFound("no such consent")
    return consent


def revoke_consent(viewer, consent: OAuthConsent) -> None:
    consent_store.revoke(consent, "revoked_by_user" if consent.user_id == viewer.id else "revoked_by_admin")
    record("oauth.consent_revoke", consent.client,
           f"consent {consent.id} of {consent.user.email} ({consent.mode}) revoked",
           target_name=consent.client.client_name or consent.client.client_id[:200])


def consent_dict(consent: OAuthConsent, live: set[int] | None = None) -> dict:
    key: VirtualKey | None = consent.virtual_key
    return {
        "id": consent.id,
        "client": {"id": consent.client.id, "client_id": consent.client.client_id,
                   "client_name": consent.client.client_name},
        "user": {"id": consent.user_id, "email": consent.user.email},
        "mode": consent.mode,
        "virtual_key": {"id": key.id, "name": key.name} if key is not None else None,
        "scopes": consent.scope.split(),
        "resource": consent.resource,
        "created_at": iso(consent.created_at), "last_used_at": iso(consent.last_used_at),
        "signed_in": None if live is None else consent.id in live,
    }


def live_of(rows) -> set[int]:
    """Consents among ``rows`` whose refresh tokens still work (else the app must sign in again)."""
    return consent_store.live_refresh_tokens([c.id for c in rows])
