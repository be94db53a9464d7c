"""The JSON admin API under /api/v1: bearer tokens, JSON errors, admin only unless stated."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..auth import load_api_user
from ..crypto import DecryptionError
from ..ops.errors import BadRequest, OpError
from ..ops.fields import MAX_QUERY, JsonRefused, parse_json

bp = Blueprint("api", __name__, url_prefix="/api/v1")
PUBLIC = {"api.create_token", "api.openapi"}
# Usable with an API token or, for vk/session flows, the flow's temp token alone.
FLOW_TOKEN_OK = {"api.get_header_flow", "api.submit_header_flow", "api.delete_credential"}


def error(status: int, code: str, message: str, fields: dict | None = None):
    body = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return jsonify(body), status


def password_change_required():
    """The answer to a user who still holds a one-time password: no API until they chose their own."""
    return error(403, "password_change_required", "this account must choose a new password on the dashboard "
                 f"first: {current_app.config['PORTCULLIS_BASE_URL']}/account/password")


@bp.before_app_request
def routing_error():
    """Under /api/v1 an unknown path or method is a JSON error too (the blueprint's own
    handlers never see it: no route matched, so the request belongs to no blueprint)."""
    e = request.routing_exception
    if e is None or not (request.path == bp.url_prefix or request.path.startswith(bp.url_prefix + "/")):
        return None
    if isinstance(e, HTTPException) and e.code in (404, 405):
        resp, status = http_error(e)
        if e.code == 405:
            resp.headers["Allow"] = ", ".join(sorted(e.valid_methods or []))
        return resp, status
    return None


@bp.before_request
def authenticate():
    g.user = None  # the API never rides on a dashboard cookie
    if request.endpoint in PUBLIC:
        return None
    if request.endpoint in FLOW_TOKEN_OK and not request.headers.get("Authorization") \
            and request.headers.get("X-Portcullis-Flow-Token"):
        return None
    user = load_api_user()
    if user is None:
        resp, status = error(401, "unauthorized", "a valid API token is required (Authorization: Bearer <token>)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="portcullis"'
        return resp, status
    if user.must_change_password:
        return password_change_required()
    return None


@bp.before_request
def query_without_nul():
    """A NUL in a query parameter is a 400 naming it: no real client sends one, and PostgreSQL
    refuses it in any comparison (every list filters on what the query string says)."""
    bad = sorted({name[:40] for name, value in request.args.items(multi=True) if "\x00" in name + value})
    if bad:
        raise BadRequest("invalid query parameters: " + ", ".join(bad), {name: "must not contain NUL" for name in bad})
    return None


def admin_only(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if not g.user.is_admin:
            return error(403, "forbidden", "this needs an admin")
        return view(*args, **kwargs)
    return wrapped


def body() -> dict:
    """The JSON body; malformed or too deeply nested JSON, or a non-object, is a 400."""
    raw = request.get_data()
    if not raw:
        raise BadRequest("a JSON object body is required")
    try:
        data = parse_json(raw)
    except JsonRefused as e:
        raise BadRequest(f"the request body is {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


MAX_OFFSET = 2**31 - 1


def _whole_number(text: str, lo: int, hi: int) -> bool:
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return text.isascii() and text.isdigit() and lo <= int(text) <= hi


MAX_LIMIT, DEFAULT_LIMIT = 500, 50  # list pages


def page_params(default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> tuple[int, int]:
    limit, offset = request.args.get("limit", str(default)), request.args.get("offset", "0")
    fields = {}
    if not _whole_number(limit, 1, maximum):
        fields["limit"] = f"must be an integer from 1 to {maximum}"
    if not _whole_number(offset, 0, MAX_OFFSET):
        fields["offset"] = f"must be an integer from 0 to {MAX_OFFSET}"
    if fields:
        raise BadRequest("invalid pagination", fields)
    return int(limit), int(offset)


def search_term() -> str:
    """A list's ``?q=``, stripped; longer than MAX_QUERY characters is a 400."""
    term = (request.args.get("q") or "").strip()
    if len(term) > MAX_QUERY:
        raise BadRequest("invalid query parameters: q", {"q": f"at most {MAX_QUERY} characters"})
    return term


def listing(name: str, query, limit: int, offset: int, to_dict):
    from ..extensions import db

    total = db.session.scalar(db.select(db.func.count()).select_from(query.order_by(None).subquery()))
    rows = db.session.scalars(query.limit(limit).offset(offset)).all()
    return jsonify({name: [to_dict(r) for r in rows], "count": len(rows), "total_count": total,
                    "limit": limit, "offset": offset})


@bp.errorhandler(OpError)
def op_error(e: OpError):
    from ..extensions import db

    db.session.rollback()
    return jsonify(e.to_dict()), e.status


@bp.errorhandler(DecryptionError)
def decryption_error(e: DecryptionError):
    from ..extensions import db

    db.session.rollback()
    return error(500, "decryption_failed", str(e))


@bp.errorhandler(HTTPException)
def http_error(e: HTTPException):
    code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 413: "too_large", 429: "rate_limited"}.get(e.code, "error")
    resp, status = error(e.code or 500, code, e.description or e.name)
    if e.code == 429:
        for k, v in (e.get_headers() or []):
            if k.lower().startswith(("retry-after", "x-ratelimit", "ratelimit")):
                resp.headers[k] = v
    return resp, status


from . import audit, header_flows, keys, oauth, openapi, servers, services, sessions, tokens, users  # noqa: E402,F401
