"""Users (admin): list, create, edit (role, active, password reset), delete."""
from __future__ import annotations

from flask import flash, g, render_template, request, url_for
from sqlalchemy import select

from ..auth import admin_required
from ..extensions import db
from ..models import User
from ..models.users import ROLES
from ..ops import users as ops
from ..ops.errors import Conflict, OpError
from . import bp, is_htmx
from .forms import checked, done, form_error, text
from .listing import matching, paginate, search_term, table_page


@bp.get("/users")
@admin_required
def users():
    term = search_term()
    query = matching(select(User).order_by(User.email), term, User.email, User.role)
    return table_page("web/users.html", "_partials/users_table.html", page=paginate(query, term))


@bp.route("/users/new", methods=["GET", "POST"])
@admin_required
def user_new():
    if request.method == "GET":
        return render_template("web/user_form.html", user=None, roles=ROLES, errors={},
                               values={"role": "member", "active": True})
    values = {"email": text("email"), "role": text("role"), "active": True}
    try:
        user = ops.create_user({"email": values["email"], "password": text("password"), "role": values["role"]})
        db.session.commit()
    except OpError as e:
        return form_error("web/user_form.html", e, user=None, roles=ROLES, values=values)
    flash(f"User {user.email} created.", "success")
    return done(url_for("web.users"))


@bp.route("/users/<id:user_id>", methods=["GET", "POST"])
@admin_required
def user_edit(user_id: int):
    user = ops.get_user(user_id)
    if request.method == "GET":
        values = {"email": user.email, "role": user.role, "active": user.active}
        return render_template("web/user_form.html", user=user, roles=ROLES, errors={}, values=values)
    values = {"email": text("email"), "role": text("role"), "active": checked("active")}
    data = dict(values)
    if text("password"):  # blank keeps the current password
        data["password"] = text("password")
    try:
        ops.update_user(user, data)
        db.session.commit()
    except OpError as e:
        return form_error("web/user_form.html", e, user=ops.get_user(user_id), roles=ROLES, values=values)
    flash(f"User {user.email} saved.", "success")
    if user.id == g.user.id and not (user.active and user.is_admin):
        return done(url_for("web.index"))  # no longer allowed on the admin pages
    return done(url_for("web.users"))


@bp.post("/users/<id:user_id>/delete")
@admin_required
def user_delete(user_id: int):
    user = ops.get_user(user_id)
    email = user.email
    try:
        if user.id == g.user.id:
            raise Conflict("you cannot delete your own account")
        ops.delete_user(user)
        db.session.commit()
    except OpError as e:
        db.session.rollback()
        if is_htmx():
            return render_template("_partials/delete_error.html", message=e.message), e.status
        user = ops.get_user(user_id)
        return render_template("web/user_form.html", user=user, roles=ROLES, errors={}, error=e.message,
                               values={"email": user.email, "role": user.role, "active": user.active}), e.status
    flash(f"User {email} deleted.", "success")
    return done(url_for("web.users"))
