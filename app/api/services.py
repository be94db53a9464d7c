from flask import jsonify

from ..extensions import db
from ..models import Service
from ..ops import services as ops
from . import admin_only, body, bp, listing, page_params, search_term


@bp.get("/services")
@admin_only
def list_services():
    limit, offset = page_params()
    q = db.select(Service).order_by(Service.name)
    if term := search_term():
        q = q.where(Service.name.contains(term.lower(), autoescape=True))
    return listing("services", q, limit, offset, Service.to_dict)


@bp.post("/services")
@admin_only
def create_service():
    service = ops.create_service(body())
    db.session.commit()
    return jsonify(service.to_dict()), 201


@bp.get("/services/<id:service_id>")
@admin_only
def get_service(service_id):
    return jsonify(ops.get_service(service_id).to_dict())


@bp.patch("/services/<id:service_id>")
@admin_only
def update_service(service_id):
    service = ops.update_service(ops.get_service(service_id), body())
    db.session.commit()
    return jsonify(service.to_dict())


@bp.delete("/services/<id:service_id>")
@admin_only
def delete_service(service_id):
    ops.delete_service(ops.get_service(service_id))
    db.session.commit()
    return "", 204
