from flask import request

from ..extensions import db
from ..models import AuditEvent
from . import admin_only, bp, listing, page_params


@bp.get("/audit-events")
@admin_only
def list_audit_events():
    limit, offset = page_params()
    q = db.select(AuditEvent).order_by(AuditEvent.id.desc())
    if request.args.get("action"):
        q = q.where(AuditEvent.action == request.args["action"])
    return listing("audit_events", q, limit, offset, AuditEvent.to_dict)
