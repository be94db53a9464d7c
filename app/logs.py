"""Log lines of the app: the format (logformat.py, shared with gunicorn's master) on the root
logger, and each request's id.

What is logged is chosen where it is logged: never a secret, key, token, header value, body or
query string (a key may be in ``?key=``). The access log (gunicorn, ``GunicornLogger``) writes the
path without its query.
"""
from __future__ import annotations

import logging
import re
import uuid

from logformat import ENVIRON_KEY, REQUEST_ID, TEXT_FORMAT, JsonFormatter, RequestIdFilter, json_mode  # noqa: F401

VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what we accept from a trusted proxy


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def request_id_for(environ, trusted: bool) -> str:
    """The proxy's X-Request-Id when a trusted proxy is in front and the value is sane, else a new one."""
    if trusted:
        given = environ.get("HTTP_X_REQUEST_ID")
        if given and VALID_ID.match(given):
            return given
    return uuid.uuid4().hex


def configure() -> None:
    """The root logger's format (when nobody configured it: gunicorn workers, the CLI)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        if json_mode():
            handler.setFormatter(JsonFormatter())
        elif handler.formatter is None:
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
