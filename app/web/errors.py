"""Error pages for the dashboard: an unknown id is a 404 page, a member on an admin page a 403."""
from __future__ import annotations

from flask import render_template
from flask_wtf.csrf import CSRFError

from ..crypto import DecryptionError
from ..extensions import db
from ..ops.errors import NotFound
from . import bp

TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found"}
TEXTS = {403: "This page is for admins.", 404: "There is nothing here, or it was deleted."}


def _page(status: int, message: str | None = None, title: str | None = None):
    return render_template("web/error.html", status=status, title=title or TITLES.get(status, "Error"),
                           message=message or TEXTS.get(status, "Something went wrong.")), status


@bp.errorhandler(NotFound)
def op_not_found(e: NotFound):
    db.session.rollback()
    return _page(404)


@bp.errorhandler(403)
def forbidden(_e):
    return _page(403)


@bp.errorhandler(404)
def not_found(_e):
    return _page(404)


@bp.errorhandler(DecryptionError)
def undecryptable(e: DecryptionError):
    db.session.rollback()
    return _page(500, str(e))


@bp.errorhandler(400)
def bad_request(e):
    return _page(400, e.description)


@bp.errorhandler(CSRFError)
def csrf_failed(_e):
    return _page(400, "The form was stale or not sent from this site. Reload the page and try again.",
                 "Form expired")
