"""The dashboard: server-rendered pages with htmx partials."""
from __future__ import annotations

from flask import Blueprint, abort, g, request

from ..auth import load_dashboard_user

bp = Blueprint("web", __name__)


@bp.before_request
def identify():
    # Only the dashboard reads the session cookie; the API and /mcp have credentials of their own.
    g.user = None
    g.login = None
    load_dashboard_user()


@bp.before_request
def form_without_nul():
    """A NUL in a form field is a 400: no browser sends one, and PostgreSQL refuses it in any
    comparison (the login's e-mail, a search). Searches in the query string drop it instead."""
    if any("\x00" in name + value for name, value in request.form.items(multi=True)):
        abort(400, "A form field contained a NUL character. Reload the page and try again.")
    return None


@bp.app_context_processor
def inject():
    return {"current_user": g.get("user")}


def is_htmx() -> bool:
    """An htmx request that wants a fragment (not a boosted link, not a history restore,
    which swaps the whole body and so needs the full page)."""
    h = request.headers
    return (h.get("HX-Request") == "true" and h.get("HX-Boosted") != "true"
            and h.get("HX-History-Restore-Request") != "true")


@bp.after_request
def htmx_response(response):
    # The same URL answers with a page or a fragment: caches must keep them apart.
    response.vary.add("HX-Request")
    # htmx would follow a redirect (say, to the login page of an expired session) and swap the
    # whole page into a fragment's place: have the browser navigate instead.
    if is_htmx() and response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
        response.headers["HX-Redirect"] = response.headers.pop("Location")
        response.status_code = 200
        response.set_data(b"")
    return response


from . import account, audit, connect, errors, keys, oauth, servers, services, sessions, sso, users  # noqa: E402,F401
