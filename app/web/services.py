"""Services (admin): HTTP APIs reached through the proxy route. The secret is write-only."""
from __future__ import annotations

from flask import flash, render_template, request, url_for
from sqlalchemy import select

from ..auth import admin_required
from ..extensions import db
from ..models import Service
from ..ops import services as ops
from ..ops.errors import OpError
from . import bp
from .forms import done, form_error, text
from .listing import matching, paginate, search_term, table_page

FIELDS = ("name", "description", "base_url", "credential_header")


@bp.get("/services")
@admin_required
def services():
    term = search_term()
    query = matching(select(Service).order_by(Service.name), term,
                     Service.name, Service.base_url, Service.description)
    return table_page("web/services.html", "_partials/services_table.html", page=paginate(query, term))


def _data(creating: bool) -> dict:
    data = {name: text(name) for name in FIELDS}
    if creating and not data["credential_header"].strip():
        del data["credential_header"]  # the default, X-API-Key
    secret = text("secret")
    if creating or secret.strip():  # on edit, blank keeps the stored secret
        data["secret"] = secret
    return data


def _values() -> dict:
    return {name: text(name) for name in FIELDS}  # never the secret


@bp.route("/services/new", methods=["GET", "POST"])
@admin_required
def service_new():
    if request.method == "GET":
        return render_template("web/service_form.html", service=None, errors={},
                               values={"credential_header": "X-API-Key"})
    try:
        service = ops.create_service(_data(creating=True))
        db.session.commit()
    except OpError as e:
        return form_error("web/service_form.html", e, service=None, values=_values())
    flash(f"Service {service.name} created.", "success")
    return done(url_for("web.services"))


@bp.route("/services/<id:service_id>", methods=["GET", "POST"])
@admin_required
def service_edit(service_id: int):
    service = ops.get_service(service_id)
    if request.method == "GET":
        values = {name: getattr(service, name) for name in FIELDS}
        return render_template("web/service_form.html", service=service, errors={}, values=values)
    try:
        ops.update_service(service, _data(creating=False))
        db.session.commit()
    except OpError as e:
        return form_error("web/service_form.html", e, service=ops.get_service(service_id), values=_values())
    flash(f"Service {service.name} saved.", "success")
    return done(url_for("web.services"))


@bp.post("/services/<id:service_id>/delete")
@admin_required
def service_delete(service_id: int):
    service = ops.get_service(service_id)
    name = service.name
    ops.delete_service(service)
    db.session.commit()
    flash(f"Service {name} deleted.", "success")
    return done(url_for("web.services"))
