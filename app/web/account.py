"""Log in, log out, change password."""
from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, url_for

from ..audit import record
from ..auth import check_login, end_login, login_required, record_failed_login, start_login
from ..extensions import db, limiter
from ..ops.users import MIN_PASSWORD, end_logins
from . import bp


def _safe_next(target: str | None) -> str:
    """Only local paths: never redirect a fresh login to another site. Backslashes (browsers
    read ``/\\host`` as ``//host``) and control or other unprintable characters (a Location
    header cannot carry them) are refused too."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or not target.isprintable()):
        return url_for("web.index")
    return target  # a path: no scheme, no host


@bp.get("/")
@login_required
def index():
    if g.user.is_admin:
        return redirect(url_for("web.servers"))
    return redirect(url_for("web.keys"))


def login_page(error: str | None = None, status: int = 200, email: str = ""):
    """The login page: the password form (unless PORTCULLIS_PASSWORD_LOGIN=false) and, with
    single sign-on configured, the "Sign in with <provider>" button."""
    cfg = current_app.config
    return render_template("web/login.html", error=error, email=email,
                           password_login=cfg["PORTCULLIS_PASSWORD_LOGIN"],
                           sso_name=cfg.get("PORTCULLIS_OIDC_PROVIDER_NAME") if cfg["PORTCULLIS_OIDC_ISSUER"] else None,
                           next=request.args.get("next")), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["PORTCULLIS_LOGIN_RATE_LIMIT"], methods=["POST"])
def login():
    error = None
    email = ""
    if request.method == "POST":
        if not current_app.config["PORTCULLIS_PASSWORD_LOGIN"]:
            return login_page("Password login is turned off here: sign in with single sign-on.", 403)
        email = (request.form.get("email") or "").strip().lower()[:254]
        password = request.form.get("password") or ""
        user, ok = check_login(email, password)
        if not ok:
            error = "Wrong e-mail or password."
            record_failed_login("login.failure", email, user)
            db.session.commit()
        else:
            start_login(user)
            record("login.success", user)
            db.session.commit()
            if user.must_change_password:
                return redirect(url_for("web.change_password"))
            return redirect(_safe_next(request.args.get("next")))
    elif g.get("user") is not None:
        return redirect(_safe_next(request.args.get("next")))
    return login_page(error, 401 if error else 200, email)


@bp.post("/logout")
def logout():
    if g.get("user") is not None:
        record("logout", g.user)
    end_login()
    db.session.commit()
    return redirect(url_for("web.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    errors = {}
    if request.method == "POST":
        current = request.form.get("current_password") or ""
        new = request.form.get("new_password") or ""
        confirm = request.form.get("confirm_password") or ""
        if not g.user.check_password(current):
            errors["current_password"] = "This is not your current password."
        if len(new) < MIN_PASSWORD:
            errors["new_password"] = f"Use at least {MIN_PASSWORD} characters."
        elif new == current:
            errors["new_password"] = "Choose a password different from the current one."
        if new != confirm:
            errors["confirm_password"] = "The two passwords differ."
        if not errors:
            g.user.set_password(new)
            g.user.must_change_password = False
            end_logins(g.user, keep=g.login)  # this login stays, every other one ends
            record("user.password_change", g.user)
            db.session.commit()
            flash("Password changed.", "success")
            return redirect(url_for("web.index"))
    return render_template("web/password.html", errors=errors), (422 if errors else 200)
