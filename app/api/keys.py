"""Virtual keys. Members may list, read and delete their own keys; the rest is admin only."""
from flask import g, jsonify, request
from sqlalchemy import or_

from ..extensions import db
from ..models import VirtualKey
from ..ops import keys as ops
from . import admin_only, body, bp, listing, page_params, search_term


@bp.get("/virtual-keys")
def list_keys():
    limit, offset = page_params()
    q = db.select(VirtualKey).order_by(VirtualKey.id.desc())
    if not g.user.is_admin:
        q = q.where(VirtualKey.owner_id == g.user.id)
    if term := search_term():
        q = q.where(or_(VirtualKey.name.icontains(term, autoescape=True),
                        VirtualKey.key_prefix.icontains(term, autoescape=True)))
    if request.args.get("source"):
        q = q.where(VirtualKey.source == request.args["source"])
    return listing("virtual_keys", q, limit, offset, VirtualKey.to_dict)


@bp.post("/virtual-keys")
@admin_only
def create_key():
    key, secret = ops.create_key(body(), source="api")
    db.session.commit()
    return jsonify({**key.to_dict(), "key": secret}), 201


@bp.get("/virtual-keys/<id:key_id>")
def get_key(key_id):
    return jsonify(ops.get_key(key_id, viewer=g.user).to_dict())


@bp.patch("/virtual-keys/<id:key_id>")
@admin_only
def update_key(key_id):
    key = ops.update_key(ops.get_key(key_id), body())
    db.session.commit()
    return jsonify(key.to_dict())


@bp.delete("/virtual-keys/<id:key_id>")
def delete_key(key_id):
    ops.delete_key(ops.get_key(key_id, viewer=g.user))
    db.session.commit()
    return "", 204
