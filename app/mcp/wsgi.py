"""Serving /mcp in front of Flask's request dispatch.

/mcp is the agents' hot path. Flask's per-request machinery (request context, URL adapter,
cookie session, before/after hooks of the dashboard and the API) costs about as much CPU as
forwarding the call upstream, and /mcp needs none of it: it has its own credentials, no
cookies, no CSRF, no templates. So /mcp and /mcp/<server-name> are answered here, with a plain
werkzeug request inside an app context (for configuration and the database); every other path
goes on to Flask unchanged. bench/mcp_overhead.py measures the difference.
"""
from __future__ import annotations

import logging
import time

from flask import Flask
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

from ..metrics import REQUEST_SECONDS
from .gateway import handle, rpc_error

log = logging.getLogger("portcullis.mcp")
PREFIX = "/mcp"


class McpEndpoint:
    def __init__(self, app: Flask, wrapped):
        self.app, self.wrapped = app, wrapped
        self.max_body = app.config.get("MAX_CONTENT_LENGTH")
        self.latency = REQUEST_SECONDS.labels("mcp")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path == PREFIX + "/":
            server_name = None
        elif path.startswith(PREFIX + "/") and "/" not in path[len(PREFIX) + 1:]:
            server_name = path[len(PREFIX) + 1:]
        else:
            return self.wrapped(environ, start_response)
        started = time.perf_counter()
        req = Request(environ)
        req.max_content_length = self.max_body
        with self.app.app_context():  # its teardown returns any database session
            try:
                response = handle(req, server_name)
            except RequestEntityTooLarge:
                response = rpc_error(None, -32600, "request body too large", 413)
            except Exception:
                log.exception("unhandled error on %s", path)
                response = rpc_error(None, -32603, "internal error", 500)
        self.latency.observe(time.perf_counter() - started)
        return response(environ, start_response)


def mount(app: Flask) -> None:
    app.wsgi_app = McpEndpoint(app, app.wsgi_app)
