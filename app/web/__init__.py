"""The dashboard: server-rendered pages with htmx partials."""
from __future__ import annotations

from flask import Blueprint, g, request

from ..auth import load_dashboard_user

bp = Blueprint("web", __name__)


@bp.before_app_request
def identify():
    g.user = None
    g.dashboard_session = None
    if request.blueprint == "web":
        load_dashboard_user()


@bp.app_context_processor
def inject():
    return {"current_user": g.get("user")}


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"


from . import account  # noqa: E402,F401
