"""Writing audit events. The actor is whoever the request (or CLI command) runs as."""
from __future__ import annotations

from flask import g, has_request_context, request

from .extensions import db
from .logs import current_request_id
from .models import AuditEvent


def current_actor() -> tuple[str, int | None, str]:
    user = g.get("user")
    if user is not None:
        return "user", user.id, user.email
    key = g.get("actor_key")  # (id, name) of a virtual key acting through /mcp (request_key)
    if key is not None:
        return "virtual_key", key[0], key[1]
    return "system", None, g.get("actor_name", "system")


def record(action: str, target=None, detail: str = "", *, target_name: str | None = None) -> AuditEvent:
    """Add an audit event to the session (committed with the change it describes)."""
    actor_type, actor_id, actor = current_actor()
    event = AuditEvent(
        actor_type=actor_type, actor_id=actor_id, actor=actor[:254], action=action,
        target_type=getattr(target, "__tablename__", None),
        target_id=getattr(target, "id", None),
        target=(target_name or _name_of(target))[:254],
        detail=detail[:500],
        ip=(request.remote_addr or "")[:64] if has_request_context() else None,
        request_id=current_request_id(),
    )
    db.session.add(event)
    return event


def _name_of(target) -> str:
    if target is None:
        return ""
    for attr in ("name", "email"):
        value = getattr(target, attr, None)
        if value:
            return str(value)
    return ""
