"""Log line format shared by the app (app/logs.py) and gunicorn's master (``logger_class`` in
gunicorn.conf.py): plain text by default, one JSON object per line with PORTCULLIS_LOG_FORMAT=json,
each line naming its request id. Kept outside the ``app`` package so that gunicorn's master
does not import the application (its workers do, each for itself).
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import time

REQUEST_ID = contextvars.ContextVar("portcullis_request_id", default=None)
ENVIRON_KEY = "portcullis.request_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def json_mode() -> bool:
    return (os.environ.get("PORTCULLIS_LOG_FORMAT") or "text").strip().lower() == "json"


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
