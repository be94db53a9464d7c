"""The authorization server's HTTP side: discovery documents, JWKS, the protocol endpoints
(everything under /oauth/) and the consent page.

Protocol endpoints answer RFC 6749 errors (``{"error", "error_description"}``). With
PORTCULLIS_MCP_AUTH=keys every route here answers 404: there is no authorization server.
"""
from __future__ import annotations

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, current_app, g, jsonify, make_response, redirect, render_template, request, url_for
from sqlalchemy import select

from .. import snapshot
from ..audit import record
from ..auth import load_dashboard_user
from ..extensions import db, limiter
from ..models import VirtualKey
from ..models.base import utcnow
from . import clients, metadata
from .metadata import SERVER_NAME_RE
from .server import Grantee, Issuer

bp = Blueprint("oauth", __name__)
CORS_ENDPOINTS = {"oauth.authorization_server_metadata", "oauth.resource_metadata", "oauth.resource_metadata_named",
                  "oauth.jwks", "oauth.token", "oauth.register", "oauth.revoke"}


def server():
    return current_app.extensions["oauth_server"]


def oauth_error(status: int, error: str, description: str):
    return jsonify({"error": error, "error_description": description}), status


@bp.before_request
def gate():
    if current_app.config["PORTCULLIS_MCP_AUTH"] == "keys":
        return oauth_error(404, "not_found", "this Portcullis runs without an authorization server "
                                             "(PORTCULLIS_MCP_AUTH=keys)")
    if request.method == "OPTIONS" and request.endpoint in CORS_ENDPOINTS:
        return make_response("", 204)
    g.user = g.login = None
    if request.endpoint in ("oauth.authorize", "oauth.token", "oauth.revoke") and not _ascii_params():
        # OAuth parameters are printable ASCII (RFC 6749 Appendix A); anything else would reach
        # the protocol library's error texts, which refuse it. A person sees a page, a client JSON.
        if request.endpoint == "oauth.authorize":
            return render_template("web/oauth_error.html", error="invalid_request",
                                   description="parameters must be printable ASCII"), 400
        return oauth_error(400, "invalid_request", "parameters must be printable ASCII")
    if request.endpoint == "oauth.authorize":
        load_dashboard_user()
    return None


def _ascii_params() -> bool:
    return all(v.isascii() and v.isprintable() for values in (request.args, request.form)
               for key in values for v in (key, *values.getlist(key)))


@bp.after_request
def cors(response):
    """Browser-based MCP clients read the metadata and call the token endpoints cross-origin;
    none of these use cookies, so any origin may."""
    if request.endpoint in CORS_ENDPOINTS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, MCP-Protocol-Version"
            response.headers["Access-Control-Max-Age"] = "600"
    if request.endpoint in ("oauth.token", "oauth.register", "oauth.authorize"):
        response.headers["Cache-Control"] = "no-store"
    return response


# -- discovery ------------------------------------------------------------------------------

@bp.route("/.well-known/oauth-authorization-server", methods=["GET", "OPTIONS"])
def authorization_server_metadata():
    return jsonify(metadata.authorization_server())


@bp.route("/.well-known/oauth-protected-resource", methods=["GET", "OPTIONS"])
@bp.route("/.well-known/oauth-protected-resource/mcp", methods=["GET", "OPTIONS"])
def resource_metadata():
    return jsonify(metadata.protected_resource(None))


@bp.route("/.well-known/oauth-protected-resource/mcp/<name>", methods=["GET", "OPTIONS"])
def resource_metadata_named(name: str):
    # Any well-formed name answers: whether such a server exists is not told before sign-in.
    if not SERVER_NAME_RE.match(name):
        return oauth_error(404, "not_found", "no such MCP endpoint")
    return jsonify(metadata.protected_resource(name))


@bp.route("/oauth/jwks", methods=["GET", "OPTIONS"])
def jwks():
    from .keys import cache

    return jsonify(cache().jwks())


# -- protocol endpoints -----------------------------------------------------------------------

def _registration_limit():
    return current_app.config["PORTCULLIS_REGISTRATION_RATE_LIMIT"]


@bp.route("/oauth/register", methods=["POST", "OPTIONS"])
@limiter.limit(_registration_limit, methods=["POST"])
def register():
    if not request.is_json:
        return oauth_error(400, "invalid_client_metadata", "send the client metadata as a JSON object")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        data = None
    if not isinstance(data, dict):
        return oauth_error(400, "invalid_client_metadata", "send the client metadata as a JSON object")
    return server().create_endpoint_response("client_registration")


@bp.route("/oauth/token", methods=["POST", "OPTIONS"])
def token():
    response = server().create_token_response()
    db.session.rollback()  # whatever a refused request left in the session (success paths committed)
    return response


@bp.route("/oauth/revoke", methods=["POST", "OPTIONS"])
def revoke():
    response = server().create_endpoint_response("revocation")
    db.session.rollback()
    return response


# -- authorize and consent --------------------------------------------------------------------

def _usable_keys(user) -> list:
    """The person's own keys that work now, as the gateway sees them."""
    snap = snapshot.current()
    now = utcnow()
    out = []
    for key_id in db.session.scalars(select(VirtualKey.id).where(VirtualKey.owner_id == user.id)
                                     .order_by(VirtualKey.name)):
        view = snap.key_by_id(key_id)
        if view is not None and view.usable(now):
            out.append(view)
    return out


def _modes() -> tuple[str, ...]:
    return ("user", "vk") if current_app.config["PORTCULLIS_ENFORCE_AUTH"] else ("user", "vk", "session")


def _error_redirect(error: OAuth2Error):
    """An invalid request sent back to the client's (verified) redirect URI, with ``iss``
    (RFC 9207 asks for it in error responses too)."""
    response = server().handle_error_response(request, error)
    Issuer().add_issuer_parameter(server(), response)
    return response


def _refused_page(error: OAuth2Error):
    """An authorization request that cannot be sent back to the client (unknown client, a
    redirect URI it did not register): said to the person, never redirected."""
    return render_template("web/oauth_error.html", error=error.error,
                           description=error.get_error_description() or ""), 400


def _allow_redirect(response, redirect_uri: str):
    """The consent form's answer redirects to the client: the dashboard's policy allows form
    submissions to this site only (form-action also governs redirects), so this answer's policy
    adds exactly the client's redirect origin."""
    from .. import SECURITY_HEADERS

    origin = clients.redirect_origin(redirect_uri)
    if origin:
        response.headers["Content-Security-Policy"] = SECURITY_HEADERS["Content-Security-Policy"].replace(
            "form-action 'self'", f"form-action 'self' {origin}")
    return response


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize():
    user = g.get("user")
    if user is None:
        return redirect(url_for("web.login", next=request.full_path))
    if user.must_change_password:
        return redirect(url_for("web.change_password"))
    try:
        grant = server().get_consent_grant(end_user=user)
    except OAuth2Error as error:
        if error.redirect_uri:
            return _error_redirect(error)
        return _refused_page(error)
    client = grant.client
    keys = _usable_keys(user)
    redirect_uri = grant.request.payload.redirect_uri
    if request.method == "GET":
        return _allow_redirect(make_response(render_template(
            "web/oauth_consent.html", client=client, grant=grant, keys=keys, modes=_modes(),
            resource=grant.request.resource, redirect_host=_host(redirect_uri), error=None)), redirect_uri)
    if request.form.get("decision") != "approve":
        record("oauth.deny", client, f"{user.email} denied {client.client_name or client.client_id[:80]}",
               target_name=client.client_name or client.client_id[:200])
        db.session.commit()
        return _allow_redirect(server().create_authorization_response(grant=grant, grant_user=None), redirect_uri)
    mode = request.form.get("mode", "user")
    key_id = None
    error = None
    if mode not in _modes():
        error = "Choose as whom the app acts."
    elif mode == "vk":
        raw = request.form.get("key_id", "")
        key_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 11 else None
        if key_id is None or key_id not in {k.id for k in keys}:
            error = "Choose one of your keys that works now."
    if error:
        db.session.rollback()
        return _allow_redirect(make_response(render_template(
            "web/oauth_consent.html", client=client, grant=grant, keys=keys, modes=_modes(),
            resource=grant.request.resource, redirect_host=_host(redirect_uri), error=error), 422), redirect_uri)
    grantee = Grantee(user, g.login.id, mode, key_id, grant.request.resource)
    response = server().create_authorization_response(grant=grant, grant_user=grantee)
    record("oauth.consent", client, f"{user.email} as {mode}{f' (key {key_id})' if key_id else ''} "
                                    f"for {grant.request.resource}",
           target_name=client.client_name or client.client_id[:200])
    db.session.commit()
    return _allow_redirect(response, redirect_uri)


def _host(uri: str | None) -> str:
    from urllib.parse import urlsplit

    return urlsplit(uri or "").netloc
