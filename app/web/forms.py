"""Turning dashboard form posts into the dicts the ops layer takes (the same shape as the JSON
API), and answering with inline errors. Validation itself lives in app/ops, never here."""
from __future__ import annotations

from flask import make_response, redirect, render_template, request

from ..extensions import db
from ..ops.errors import OpError


def text(name: str) -> str:
    return request.form.get(name) or ""


def checked(name: str) -> bool:
    return name in request.form


def int_or_raw(value: str):
    """'42' -> 42, '' -> None; anything else is passed on as is so the ops layer names the error."""
    value = (value or "").strip()
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return value


def number_or_raw(value: str):
    """'2.5' -> 2.5; anything else is passed on as is so the ops layer names the error."""
    try:
        return float(value.strip())
    except ValueError:
        return value


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def form_error(template: str, error: OpError, status: int | None = None, **context):
    """Re-render a form with the ops error: per-field messages inline, the rest on top.
    Nothing was changed: the session is rolled back."""
    db.session.rollback()
    fields = dict(error.fields or {})
    context.setdefault("values", {})
    body = render_template(template, errors=fields, error=None if fields else error.message, **context)
    return make_response(body, status or (422 if error.status in (400, 422) else error.status))


def done(location: str):
    """After a successful change: a redirect for a form post, HX-Redirect for htmx."""
    return redirect(location, code=303)  # htmx gets it as HX-Redirect (see htmx_response)
