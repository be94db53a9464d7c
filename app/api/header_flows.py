"""Per-user header submission flows and credentials over JSON.

``user`` flows are used with the person's own API token; ``vk``/``session`` flows with the temp
token from the submit URL's fragment, sent in the X-Portcullis-Flow-Token header."""
from flask import g, jsonify, request

from ..credentials import flows as ops
from . import body, bp


def _token():
    return request.headers.get(ops.TOKEN_HEADER) or None


@bp.get("/header-flows/<flow_id>")
def get_header_flow(flow_id):
    flow = ops.get_flow(flow_id)
    ops.authorize(flow, g.user, _token())
    ops.check_open(flow)
    return jsonify(ops.form(flow))


@bp.put("/header-flows/<flow_id>")
def submit_header_flow(flow_id):
    flow = ops.get_flow(flow_id)
    ops.authorize(flow, g.user, _token())
    data = body()
    cred = ops.submit(flow, data.get("headers"))
    return jsonify(cred.to_dict())


@bp.delete("/credentials/<id:credential_id>")
def delete_credential(credential_id):
    cred = ops.get_credential(credential_id)
    if not ops.may_revoke(cred, g.user, _token()):
        if g.user is None:
            raise ops.Forbidden("an API token of the owner or an admin, or the flow token, is required")
        raise ops.NotFound("no such credential")
    ops.revoke(cred)
    return "", 204
