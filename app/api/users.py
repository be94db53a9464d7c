from flask import g, jsonify

from ..extensions import db
from ..models import User
from ..ops import users as ops
from . import admin_only, body, bp, listing, page_params, search_term


@bp.get("/users")
@admin_only
def list_users():
    limit, offset = page_params()
    q = db.select(User).order_by(User.id)
    if term := search_term():
        q = q.where(User.email.contains(term.lower(), autoescape=True))
    return listing("users", q, limit, offset, User.to_dict)


@bp.post("/users")
@admin_only
def create_user():
    user = ops.create_user(body())
    db.session.commit()
    return jsonify(user.to_dict()), 201


@bp.get("/users/<id:user_id>")
@admin_only
def get_user(user_id):
    return jsonify(ops.get_user(user_id).to_dict())


@bp.patch("/users/<id:user_id>")
@admin_only
def update_user(user_id):
    user = ops.update_user(ops.get_user(user_id), body())
    db.session.commit()
    return jsonify(user.to_dict())


@bp.delete("/users/<id:user_id>")
@admin_only
def delete_user(user_id):
    user = ops.get_user(user_id)
    if user.id == g.user.id:
        from ..ops.errors import Conflict
        raise Conflict("you cannot delete your own account")
    ops.delete_user(user)
    db.session.commit()
    return "", 204
