"""The audit log (admin): newest first, searchable by action, actor or target."""
from __future__ import annotations

from sqlalchemy import select

from ..auth import admin_required
from ..models import AuditEvent
from . import bp
from .listing import matching, paginate, search_term, table_page

PER_PAGE = 50


@bp.get("/audit")
@admin_required
def audit():
    term = search_term()
    query = matching(select(AuditEvent).order_by(AuditEvent.id.desc()), term,
                     AuditEvent.action, AuditEvent.actor, AuditEvent.target, AuditEvent.detail)
    return table_page("web/audit.html", "_partials/audit_table.html", page=paginate(query, term, PER_PAGE))
