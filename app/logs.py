"""Log lines: plain text by default, one JSON object per line with PORTCULLIS_LOG_FORMAT=json;
either way each line written while a request is served names its request id.

What is logged is chosen where it is logged: never a secret, key, token, header value, body or
query string (a key may be in ``?key=``). The access log (gunicorn, ``GunicornLogger``) writes the
path without its query.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid

REQUEST_ID = contextvars.ContextVar("portcullis_request_id", default=None)
ENVIRON_KEY = "portcullis.request_id"
VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what we accept from a trusted proxy
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def json_mode() -> bool:
    return (os.environ.get("PORTCULLIS_LOG_FORMAT") or "text").strip().lower() == "json"


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def request_id_for(environ, trusted: bool) -> str:
    """The proxy's X-Request-Id when a trusted proxy is in front and the value is sane, else a new one."""
    if trusted:
        given = environ.get("HTTP_X_REQUEST_ID")
        if given and VALID_ID.match(given):
            return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record):
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid and rid != "-":
            out["request_id"] = rid
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            out.update(http)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


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


try:  # gunicorn's logger, for gunicorn.conf.py (absent where gunicorn is not installed)
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # pragma: no cover
    _GunicornLogger = object


class GunicornLogger(_GunicornLogger):
    """gunicorn's own lines in the same format; the access log as JSON with the request id (path
    only, never the query string)."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.addFilter(RequestIdFilter())
                if json_mode():
                    handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        if not json_mode():
            return super().access(resp, req, environ, request_time)
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        http = {"method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO", ""),
                "status": int(status), "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "remote": environ.get("REMOTE_ADDR")}
        self.access_log.info("request", extra={"http": http, "request_id": environ.get(ENVIRON_KEY) or "-"})
