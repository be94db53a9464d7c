"""Who is using the dashboard or the JSON API: server-side sessions and personal API tokens.

(Agents are identified elsewhere, by virtual keys on /mcp and the proxy route.)
"""
from __future__ import annotations

from datetime import timedelta
from functools import wraps

from flask import abort, current_app, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from .extensions import db
from .models import ApiToken, DashboardSession, User
from .models.base import digest, utcnow

TOUCH_EVERY = timedelta(seconds=60)  # write last_seen/last_used at most this often


def start_session(user: User) -> DashboardSession:
    row, token = DashboardSession.start(user, current_app.config["PORTCULLIS_SESSION_HOURS"],
                                        request.remote_addr, request.headers.get("User-Agent"))
    db.session.add(row)
    user.last_login_at = utcnow()
    session.clear()
    session["sid"] = token
    session.permanent = False
    g.user, g.dashboard_session = user, row
    return row


def end_session() -> None:
    """Log out: this login ends, and so do the OAuth refresh tokens issued under it."""
    from .oauth_server.consents import end_refresh_tokens

    row = g.get("dashboard_session")
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        end_refresh_tokens(login_ids=[row.id])
    session.clear()


def load_dashboard_user() -> None:
    token = session.get("sid")
    if not token:
        return
    row = db.session.scalar(db.select(DashboardSession).where(DashboardSession.token_hash == digest(token)))
    now = utcnow()
    if row is None or not row.usable(now):
        session.clear()
        return
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
        db.session.commit()
    g.user, g.dashboard_session = row.user, row


def load_api_user() -> User | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    row = db.session.scalar(db.select(ApiToken).where(ApiToken.token_hash == digest(token.strip())))
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now or not row.user.active:
        return None
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        row.last_used_at = now
        db.session.commit()
    g.user = row.user
    return row.user


def login_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        user = g.get("user")
        if user is None:
            return redirect(url_for("web.login", next=request.full_path if request.query_string else request.path))
        if user.must_change_password and request.endpoint not in ("web.change_password", "web.logout"):
            return redirect(url_for("web.change_password"))
        return view(*args, **kwargs)
    return wrapped


def admin_required(view):
    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not g.user.is_admin:
            abort(403)
        return view(*args, **kwargs)
    return wrapped


class DashboardCookieSessions(SecureCookieSessionInterface):
    """The signed session cookie exists for the dashboard only. The API and /mcp authenticate
    every request with a bearer credential, so they get a null session: no cookie is read or
    set there, and the agents' hot path skips the signing work."""

    COOKIELESS = ("/mcp", "/api/", "/proxy/")

    def open_session(self, app, request):
        if request.path.startswith(self.COOKIELESS):
            return self.make_null_session(app)
        return super().open_session(app, request)
