"""/connect/<flow_id>: where a person types their own header values for one server.

``user`` flows need the dashboard login of that user (login and back; another user: 403).
``vk``/``session`` flows carry a temp token in the URL fragment (#t=..., never sent to the
server by the browser); static/connect.js moves it into the X-Portcullis-Flow-Token request
header, removes it from the address bar and loads the form. The form posts with htmx (partial
swap) and, for user flows, works as a plain form post without JavaScript too.
"""
from __future__ import annotations

from flask import abort, g, make_response, redirect, render_template, request, url_for

from ..extensions import db
from ..models import McpServer
from ..credentials import flows as ops
from ..ops.errors import BadRequest, Forbidden, OpError
from . import bp, is_htmx


def _token():
    return request.headers.get(ops.TOKEN_HEADER) or None


def _gone(flow_id: str, message: str):
    db.session.rollback()
    template = "_partials/connect_gone.html" if is_htmx() else "web/connect_gone.html"
    return make_response(render_template(template, message=message, flow_id=flow_id), 410)


def _load(flow_id: str):
    """The flow, or a response: login redirect, 403, 404, 410."""
    flow = ops.get_flow(flow_id)  # NotFound -> the 404 page
    if flow.auth_mode == "user" and g.get("user") is None:
        return None, redirect(url_for("web.login", next=request.path))
    try:
        ops.authorize(flow, g.get("user"), _token())
        ops.check_open(flow)
    except ops.Gone as e:
        return None, _gone(flow_id, e.message)
    except Forbidden:
        abort(403)
    return flow, None


def _form(flow, status=200, errors=None, error=None):
    context = {"flow": flow, "form": ops.form(flow), "errors": errors or {}, "error": error}
    if is_htmx():
        return make_response(render_template("_partials/connect_form.html", **context), status)
    return make_response(render_template("web/connect.html", **context), status)


@bp.get("/connect/<flow_id>")
def connect(flow_id: str):
    flow = ops.get_flow(flow_id)
    if flow.auth_mode != "user" and not _token():
        # The token is in the fragment: the page's script reads it and loads the form.
        if flow.status != "pending" or flow.expired():
            return _gone(flow_id, "this link was used or has expired; retry the call in your agent for a new one")
        return render_template("web/connect.html", flow=flow, form=None, errors={}, error=None)
    flow, response = _load(flow_id)
    return response or _form(flow)


@bp.get("/connect/<flow_id>/form")
def connect_form(flow_id: str):
    flow, response = _load(flow_id)
    return response or _form(flow)


@bp.post("/connect/<flow_id>")
def connect_submit(flow_id: str):
    flow, response = _load(flow_id)
    if response is not None:
        return response
    headers = {k.split(":", 1)[1]: v for k, v in request.form.items() if k.startswith("header:")}
    try:
        cred = ops.submit(flow, headers)
    except ops.Gone as e:
        return _gone(flow_id, e.message)
    except (BadRequest, OpError) as e:
        db.session.rollback()
        flow = ops.get_flow(flow_id)
        return _form(flow, 422 if isinstance(e, (BadRequest, ops.Rejected)) else e.status,
                     errors=e.fields, error=e.message)
    # a link started before access was withdrawn (on another instance) stores an orphaned credential
    context = {"server_name": db.session.get(McpServer, cred.mcp_server_id).name, "orphaned": cred.status == "orphaned"}
    template = "_partials/connect_done.html" if is_htmx() else "web/connect_done.html"
    return render_template(template, **context)
