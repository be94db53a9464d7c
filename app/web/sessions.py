"""/sessions: every stored credential and pending flow the person may see (admins: all), with
live search, filter chips and pagination kept in the URL; re-authenticate, revoke, and connect
a granted server that has no credential yet. The rules live in app/ops/connections.py."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import flash, g, render_template, request, url_for

from ..auth import login_required
from ..extensions import db
from ..models.base import utcnow
from ..ops import connections as ops
from ..ops.errors import Forbidden
from . import bp, is_htmx
from .forms import done, int_or_raw, text
from .listing import PER_PAGE, Page, page_number, table_page

CHIPS = (
    ("status", "Status", ("active", "needs_update", "orphaned", "pending")),
    ("auth_mode", "Mode", ("user", "vk", "session")),
    ("kind", "Kind", ("credential", "flow")),
)


@dataclass
class SessionsPage(Page):
    """A page of the sessions list, whose URLs carry its filters."""

    filters: ops.Filters

    @property
    def filtered(self) -> bool:
        return bool(self.filters.params())

    def url(self, page: int | None = None, **changes) -> str:
        params = {**self.filters.params(), **changes}
        params = {k: v for k, v in params.items() if v not in (None, "")}
        if page and page > 1:
            params["page"] = page
        return url_for("web.sessions", **params)

    def toggle(self, name: str, value: str) -> str:
        """This page's URL with one filter value switched on or off (back to page 1)."""
        current = [str(v) for v in getattr(self.filters, name)]
        values = [v for v in current if v != value] if value in current else [*current, value]
        return self.url(**{name: ",".join(values) or None})

    def on(self, name: str, value: str) -> bool:
        return value in [str(v) for v in getattr(self.filters, name)]


@bp.get("/sessions")
@login_required
def sessions():
    filters = ops.parse_filters(request.args, strict=False)
    number = page_number()
    rows, total = ops.list_sessions(g.user, filters, PER_PAGE, (number - 1) * PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    if number > pages:  # past the end (rows were revoked since): show the last page
        number = pages
        rows, total = ops.list_sessions(g.user, filters, PER_PAGE, (number - 1) * PER_PAGE)
    page = SessionsPage(rows, number, pages, total, filters.q, filters)
    context = {"page": page, "chips": _chips(), "now": utcnow()}
    if is_htmx():
        return table_page("web/sessions.html", "_partials/sessions_results.html", **context)
    return render_template("web/sessions.html", connectable=ops.connectable(g.user), **context)


def _chips():
    if g.user.is_admin:
        return CHIPS
    return tuple((name, label, tuple(v for v in values if v != "session")) for name, label, values in CHIPS)


@bp.post("/sessions/<row_id>/reauth")
@login_required
def session_reauth(row_id: str):
    try:
        out = ops.reauth(g.user, row_id)  # NotFound -> the 404 page
    except Forbidden as e:
        db.session.rollback()
        return render_template("web/error.html", status=403, title="Not allowed", message=e.message), 403
    return done(_connect_url(out))


@bp.post("/sessions/<row_id>/revoke")
@login_required
def session_revoke(row_id: str):
    row = ops.get_session(g.user, row_id)
    ops.revoke(g.user, row_id)
    if is_htmx():
        return render_template("_partials/sessions_revoked.html", row=row)
    flash(f"Revoked: {row['server']['name']} ({row['kind']}).", "success")
    return done(url_for("web.sessions"))


@bp.post("/sessions/connect")
@login_required
def session_connect():
    out = ops.connect(g.user, int_or_raw(text("server_id")))  # NotFound -> the 404 page
    return done(_connect_url(out))


def _connect_url(out: dict) -> str:
    """The submission page on this site (a relative URL), with the token fragment if any."""
    return url_for("web.connect", flow_id=out["flow_id"]) + (f"#t={out['_token']}" if out["_token"] else "")


@bp.app_template_filter("ago")
def ago(dt: datetime | None, now: datetime | None = None) -> str:
    """'3 minutes ago', 'in 12 minutes', 'just now' (UTC, naive datetimes)."""
    if dt is None:
        return ""
    seconds = ((now or utcnow()) - dt).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 45:
        return "just now" if not future else "in a moment"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = int(round(seconds / size)) if size == 60 else int(seconds // size)
            text_ = f"{n} {unit}{'' if n == 1 else 's'}"
            return f"in {text_}" if future else f"{text_} ago"
    return "just now"
