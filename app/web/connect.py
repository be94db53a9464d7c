"""/connect/<flow_id>: where a person types their own header values for one server, or (an
``oauth`` flow) is sent to the upstream to sign in and allow access; /connect/callback is where
the upstream sends them back; /connect/client-metadata.json is Portcullis's client ID metadata
document for upstreams (app/upstream_oauth).

``user`` flows need the dashboard login of that user (login and back; another user: 403).
``vk``/``session`` flows carry a temp token in the URL fragment (#t=..., never sent to the
server by the browser); static/connect.js moves it into the X-Portcullis-Flow-Token request
header, removes it from the address bar and loads the form. The form posts with htmx (partial
swap) and, for user flows, works as a plain form post without JavaScript too.
"""
from __future__ import annotations

from flask import abort, g, jsonify, make_response, redirect, render_template, request, url_for

from ..extensions import db
from ..models import McpServer
from ..credentials import flows as ops
from ..ops.errors import BadRequest, Forbidden, NotFound, OpError
from ..upstream_oauth import connect as upstream_oauth
from ..upstream_oauth import registration
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


@bp.get("/connect/<flow_id>/authorize")
def connect_authorize(flow_id: str):
    """An oauth flow: on to the upstream's authorization endpoint (a fresh PKCE verifier and
    state are stored with the flow). With htmx (vk/session flows, whose token rides in a
    header) the redirect becomes HX-Redirect, a navigation; without, a plain 303."""
    flow, response = _load(flow_id)
    if response is not None:
        return response
    if flow.kind != "oauth":
        abort(404)
    try:
        url = upstream_oauth.begin(flow)
    except ops.Gone as e:
        return _gone(flow_id, e.message)
    except OpError as e:
        db.session.rollback()
        return _form(ops.get_flow(flow_id), e.status, error=e.message)
    return redirect(url, 303)


@bp.get("/connect/callback")
def connect_callback():
    """Where the upstream sends the person back (code, state, iss; or an error)."""
    try:
        flow = upstream_oauth.flow_of_state(request.args)
    except (BadRequest, NotFound):
        return _callback_error(400, "This answer from the upstream does not belong to a connection in progress.")
    if flow.auth_mode == "user" and g.get("user") is None:
        return redirect(url_for("web.login", next=request.full_path))
    try:
        done = upstream_oauth.finish(flow, request.args, g.get("user"))
    except ops.Gone as e:
        return _gone(flow.id, e.message)
    except Forbidden as e:
        return _callback_error(403, e.message)
    except OpError as e:
        return _callback_error(e.status if e.status < 500 else 502, e.message)
    context = {"server_name": done["server"], "orphaned": done["orphaned"], "oauth": True, "shared": done["shared"]}
    return render_template("web/connect_done.html", **context)


def _callback_error(status: int, message: str):
    db.session.rollback()
    # nothing was stored: say so, with the reason (the connection can be started again)
    return make_response(render_template("web/connect_gone.html", message=message.rstrip(".") + ". Nothing was stored.",
                                         title="Not connected"), status)


@bp.get("/connect/client-metadata.json")
def client_metadata():
    """Portcullis's client ID metadata document (served only where it can be used: an HTTPS
    base URL)."""
    url = registration.client_metadata_url()
    if url is None:
        abort(404)
    response = jsonify(registration.client_metadata(url))
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.post("/connect/<flow_id>")
def connect_submit(flow_id: str):
    flow, response = _load(flow_id)
    if response is not None:
        return response
    if flow.kind == "oauth":
        abort(405)
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
