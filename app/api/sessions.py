"""Sessions: every stored per-user credential and pending flow the caller may see, to list,
re-authenticate and revoke (the rules live in app/ops/connections.py)."""
from flask import g, jsonify, request

from ..ops import connections as ops
from ..ops.errors import BadRequest
from . import bp, page_params


@bp.get("/sessions")
def list_sessions():
    fields = {}
    try:
        filters = ops.parse_filters(request.args)
    except BadRequest as e:
        fields.update(e.fields)
    try:
        limit, offset = page_params()
    except BadRequest as e:
        fields.update(e.fields)
    if fields:
        raise BadRequest("invalid query parameters: " + ", ".join(sorted(fields)), fields)
    rows, total = ops.list_sessions(g.user, filters, limit, offset)
    return jsonify({"sessions": [ops.public(r) for r in rows], "count": len(rows), "total_count": total,
                    "limit": limit, "offset": offset})


@bp.post("/sessions/<row_id>/reauth")
def reauth_session(row_id):
    out = ops.reauth(g.user, row_id)
    return jsonify({k: v for k, v in out.items() if not k.startswith("_")})


@bp.delete("/sessions/<row_id>")
def delete_session(row_id):
    ops.revoke(g.user, row_id)
    return "", 204
