"""Who is using the dashboard or the JSON API: server-side logins (``Login``, kept in a signed
cookie's random token) and personal API tokens.

(Agents are identified elsewhere, by app/identity.py, on /mcp and the proxy route.)
"""
from __future__ import annotations

import hmac
from datetime import timedelta
from functools import wraps

from flask import abort, current_app, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.security import check_password_hash

from .audit import record
from .extensions import db
from .models import ApiToken, Login, User
from .models.base import digest, utcnow
from .models.users import dummy_password_hash

TOUCH_EVERY = timedelta(seconds=60)  # write last_seen/last_used at most this often


def check_login(email: str, password: str) -> tuple[User | None, bool]:
    """The user ``email`` names (or None) and whether ``password`` logs them in (active users
    only). Exactly one password hash is verified whatever the outcome, a dummy one for an unknown
    e-mail, so the time an answer takes does not tell existing addresses from unknown ones."""
    dummy = dummy_password_hash()  # made on the first attempt of any kind, not only unknown ones
    user = db.session.scalar(db.select(User).where(User.email == email)) if email else None
    ok = check_password_hash(user.password_hash if user is not None else dummy, password)
    return user, ok and user is not None and user.active


def record_failed_login(action: str, email: str, user: User | None, detail: str = "") -> None:
    """Audit a refused login. The typed e-mail is kept only when it is a known user's address;
    anything else (a password typed into the wrong field) is stored as a short keyed hash, which
    still shows repeated attempts with the same text."""
    if user is not None:
        record(action, user, detail)
        return
    mac = hmac.new(current_app.config["SECRET_KEY"].encode(), email.encode(), "sha256").hexdigest()[:12]
    record(action, target_name=f"unknown e-mail #{mac}", detail=detail)


def start_login(user: User) -> Login:
    row, token = Login.start(user, current_app.config["PORTCULLIS_SESSION_HOURS"],
                                        request.remote_addr, request.headers.get("User-Agent"))
    db.session.add(row)
    user.last_login_at = utcnow()
    session.clear()
    session["sid"] = token
    session.permanent = False
    g.user, g.login = user, row
    return row


def end_login() -> None:
    """Log out: this login ends, and so do the OAuth refresh tokens issued under it."""
    from .oauth_server.consents import end_refresh_tokens

    row = g.get("login")
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        end_refresh_tokens(login_ids=[row.id])
    session.clear()


def load_dashboard_user() -> None:
    token = session.get("sid")
    if not token:
        return
    row = db.session.scalar(db.select(Login).where(Login.token_hash == digest(token)))
    now = utcnow()
    if row is None or not row.usable(now):
        session.clear()
        return
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
        db.session.commit()
    g.user, g.login = row.user, row


def load_api_user() -> User | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    row = db.session.scalar(db.select(ApiToken).where(ApiToken.token_hash == digest(token.strip())))
    now = utcnow()
    if row is None or not row.usable(now):
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
