"""Personal API tokens: issue one for e-mail and password, list and revoke them."""
from flask import current_app, g, jsonify, request

from ..audit import record
from ..auth import check_login, record_failed_login
from ..extensions import db, limiter
from ..models import ApiToken
from ..models.base import iso
from ..ops import tokens as ops
from ..ops.errors import BadRequest
from ..ops.fields import Fields, valid_id
from ..ops.users import MAX_EMAIL, MAX_PASSWORD
from . import body, bp, error, listing, page_params, password_change_required


def _login_limit():
    return current_app.config["PORTCULLIS_LOGIN_RATE_LIMIT"]


@bp.post("/tokens")
@limiter.limit(_login_limit, methods=["POST"])
def create_token():
    """Exchange e-mail and password for a personal API token (any active user who has no
    one-time password left to change)."""
    if not current_app.config["PORTCULLIS_PASSWORD_LOGIN"]:
        return error(403, "password_login_disabled",
                     "password login is turned off on this instance (PORTCULLIS_PASSWORD_LOGIN=false): "
                     "people sign in through single sign-on")
    f = Fields(body(), {"email", "password"})
    email = f.string("email", required=True, max_len=MAX_EMAIL)
    password = f.string("password", required=True, max_len=MAX_PASSWORD, strip=False)
    f.done()
    user, ok = check_login(email.lower(), password)
    if not ok:
        record_failed_login("token.denied", email.lower(), user, "bad credentials or inactive user")
        db.session.commit()
        return error(401, "unauthorized", "wrong e-mail or password")
    g.user = user
    if user.must_change_password:
        record("token.denied", user, "password change required")
        db.session.commit()
        return password_change_required()
    row, token = ApiToken.issue(user, current_app.config["PORTCULLIS_API_TOKEN_HOURS"])
    db.session.add(row)
    record("token.create", user, f"prefix={row.prefix}")
    db.session.commit()
    return jsonify({"token": token, "expires_at": iso(row.expires_at)}), 201


@bp.get("/tokens")
def list_tokens():
    """The caller's own tokens, or with ?user_id= (admins) another user's; never a token itself."""
    limit, offset = page_params()
    raw = request.args.get("user_id", "")
    user_id = None
    if raw:
        user_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 10 else None
        if not valid_id(user_id):
            raise BadRequest("invalid user_id", {"user_id": "must be a user id (a positive integer)"})
    return listing("tokens", ops.tokens_of(g.user, user_id), limit, offset, ApiToken.to_dict)


@bp.delete("/tokens/<id:token_id>")
def delete_token(token_id):
    ops.revoke_token(ops.get_token(token_id, g.user))
    db.session.commit()
    return "", 204
