"""Personal API tokens: who may see and revoke which. (They are issued by POST /api/v1/tokens
and all end together with the user's dashboard logins: ops.users.end_logins.)"""
from __future__ import annotations

from sqlalchemy import Select, select

from ..audit import record
from ..extensions import db
from ..models import ApiToken, User
from ..models.base import utcnow
from .errors import Forbidden, NotFound
from .fields import valid_id
from .users import get_user


def tokens_of(viewer: User, user_id: int | None = None) -> Select:
    """The tokens of ``user_id`` (default: the viewer's own), newest first; only an admin may
    ask for another user's."""
    if user_id is None or user_id == viewer.id:
        owner_id = viewer.id
    elif not viewer.is_admin:
        raise Forbidden("only an admin may list another user's tokens", {"user_id": "must be your own id"})
    else:
        owner_id = get_user(user_id).id
    return select(ApiToken).where(ApiToken.user_id == owner_id).order_by(ApiToken.id.desc())


def get_token(token_id: int, viewer: User) -> ApiToken:
    """One token: the viewer's own, or any for an admin; anything else is not found."""
    row = db.session.get(ApiToken, token_id) if valid_id(token_id) else None
    if row is None or not (viewer.is_admin or row.user_id == viewer.id):
        raise NotFound("no such token")
    return row


def revoke_token(row: ApiToken) -> None:
    """Revoke a token (kept, with revoked_at, so the list shows what ended when). Revoking it
    again changes nothing and is not audited twice."""
    if row.revoked_at is not None:
        return
    row.revoked_at = utcnow()
    record("token.revoke", row.user, f"prefix={row.prefix}")
