"""Dashboard login through the team's OpenID provider (policy and Authlib set-up: app/sso.py)."""
from __future__ import annotations

import logging

import requests
from authlib.common.errors import AuthlibBaseError
from flask import abort, current_app, g, redirect, request, session
from joserfc.errors import JoseError
from sqlalchemy.exc import IntegrityError

from .. import sso
from ..audit import record
from ..auth import record_failed_login, start_login
from ..extensions import db, limiter
from . import bp
from .account import _safe_next, login_page

log = logging.getLogger(__name__)
NEXT = "sso_next"


def _limit():
    return current_app.config["PORTCULLIS_LOGIN_RATE_LIMIT"]


def _client():
    client = sso.client()
    if client is None:
        abort(404)
    return client


@bp.get("/login/sso")
@limiter.limit(_limit)
def sso_start():
    client = _client()
    if g.get("user") is not None:
        return redirect(_safe_next(request.args.get("next")))
    target = _safe_next(request.args.get("next"))
    try:
        # state, nonce and the PKCE verifier go into the signed session cookie (Authlib)
        response = client.authorize_redirect(sso.redirect_uri())
    except (requests.RequestException, AuthlibBaseError, ValueError, KeyError) as e:
        log.warning("single sign-on: the identity provider is unreachable (%s)", type(e).__name__)
        return login_page("The identity provider cannot be reached. Try again later.", 502)
    session[NEXT] = target
    return response


@bp.get(sso.CALLBACK)
@limiter.limit(_limit)
def sso_callback():
    client = _client()
    target = _safe_next(session.get(NEXT))
    who = None
    try:
        sso.check_issuer(client.load_server_metadata(), request.args.get("iss"))
        token = client.authorize_access_token()  # state, code + PKCE verifier, ID token and nonce
        who = sso.identity_from(token)
        user = sso.user_for(who)
    except sso.Refused as e:
        db.session.rollback()
        record_failed_login("login.sso_refused", e.email or (who.email if who else ""), e.user, e.reason)
        db.session.commit()
        return login_page(e.message, 403)
    except (requests.RequestException, AuthlibBaseError, JoseError, ValueError, KeyError, TypeError,
            IntegrityError) as e:
        # A wrong or replayed state, a nonce or signature that does not match, a refused code,
        # an unreachable provider, the same person's first sign-in racing in another tab:
        # nobody is signed in, and nothing of the answer is shown.
        db.session.rollback()
        reason = getattr(e, "error", None) or type(e).__name__
        record("login.sso_refused", target_name="single sign-on", detail=f"invalid answer: {str(reason)[:60]}")
        db.session.commit()
        return login_page("Single sign-on did not complete. Try again.", 400)
    start_login(user)
    record("login.sso", user, f"single sign-on ({current_app.config['PORTCULLIS_OIDC_PROVIDER_NAME']})")
    db.session.commit()
    return redirect(target)
