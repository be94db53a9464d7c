"""Per-binding credentials: status changes made by admin edits, revocation."""
from __future__ import annotations

from sqlalchemy import select, update

from ..audit import record
from ..extensions import db
from ..models import Credential
from ..models.base import utcnow


def after_server_update(result) -> int:
    """Run once the server update has committed: a real change of the per-user key set flips
    every ``active`` credential of that server to ``needs_update`` (each member resubmits, only
    the new keys). Returns how many changed."""
    if not result.header_keys_changed:
        return 0
    server = result.server
    rows = (select(Credential.id).where(Credential.mcp_server_id == server.id, Credential.status == "active")
            .order_by(Credential.id).with_for_update())  # credential rows in id order, like every writer
    n = db.session.execute(
        update(Credential)
        .where(Credential.id.in_(rows))
        .values(status="needs_update", status_changed_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)).rowcount
    if n:
        record("credential.needs_update", server, f"{n} credential(s) must be resubmitted: header keys changed")
    db.session.commit()
    from ..credentials.per_user_headers import invalidate

    invalidate()  # a bulk update: no ORM object tells the cache
    return n
