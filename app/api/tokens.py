from flask import current_app, jsonify
from sqlalchemy import select

from ..audit import record
from ..extensions import db, limiter
from ..models import ApiToken, User
from ..models.base import iso
from ..ops.fields import Fields
from . import body, bp, error


def _login_limit():
    return current_app.config["PORTCULLIS_LOGIN_RATE_LIMIT"]


@bp.post("/tokens")
@limiter.limit(_login_limit, methods=["POST"])
def create_token():
    """Exchange e-mail and password for a personal API token (any active user)."""
    f = Fields(body(), {"email", "password"})
    email = f.string("email", required=True, max_len=254)
    password = f.string("password", required=True, max_len=200, strip=False)
    f.done()
    user = db.session.scalar(select(User).where(User.email == email.lower()))
    if user is None or not user.active or not user.check_password(password):
        record("token.denied", target_name=email.lower()[:254], detail="bad credentials or inactive user")
        db.session.commit()
        return error(401, "unauthorized", "wrong e-mail or password")
    row, token = ApiToken.issue(user, current_app.config["PORTCULLIS_API_TOKEN_HOURS"])
    db.session.add(row)
    from flask import g
    g.user = user
    record("token.create", user, f"prefix={row.prefix}")
    db.session.commit()
    return jsonify({"token": token, "expires_at": iso(row.expires_at)}), 201
