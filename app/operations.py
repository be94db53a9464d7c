"""What a load balancer and a monitoring system call, and the request id of every request.

``Front`` is the outermost WSGI layer. It gives each request an id (``X-Request-Id`` from a
trusted proxy, else a new one), echoed in the answer and named by every log line and audit
event of the request; and it answers, before anything else and without login or cookie:

- ``GET /healthz``: the process answers (200, no database);
- ``GET /readyz``: database reachable, migrations current, Redis reachable when configured;
  200, or 503 naming the failing part (never a URL, password or error text);
- ``GET /metrics``: Prometheus text format (app/metrics.py), with
  ``Authorization: Bearer <PORTCULLIS_METRICS_TOKEN>`` when that is set.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading

from werkzeug.wrappers import Response

from . import logs

log = logging.getLogger("portcullis.ops")
PATHS = ("/healthz", "/readyz", "/metrics")
CHECK_TIMEOUT = 3  # seconds for each readiness check


def _json(payload: dict, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


class Readiness:
    def __init__(self, app):
        self.app = app
        self._heads: frozenset[str] | None = None
        self._redis = None
        self._lock = threading.Lock()

    def heads(self) -> frozenset[str]:
        """The head revision(s) of the migrations this code ships (read once)."""
        if self._heads is None:
            from alembic.script import ScriptDirectory

            directory = self.app.extensions["migrate"].directory
            self._heads = frozenset(ScriptDirectory(directory).get_heads())
        return self._heads

    def database(self) -> tuple[str, str]:
        from sqlalchemy import text

        from .extensions import db

        with self.app.app_context():
            try:
                with db.engine.connect() as conn:
                    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            except Exception as e:  # noqa: BLE001
                log.warning("readiness: database check failed (%s)", type(e).__name__)
                return "unreachable", "migrations_unknown"
        return "ok", "ok" if frozenset(rows) == self.heads() else "not_current"

    def redis(self) -> str:
        url = self.app.config.get("REDIS_URL")
        if not url:
            return "not_configured"
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT,
                                                   socket_connect_timeout=CHECK_TIMEOUT)
        try:
            self._redis.ping()
        except Exception as e:  # noqa: BLE001
            log.warning("readiness: Redis check failed (%s)", type(e).__name__)
            return "unreachable"
        return "ok"

    def answer(self) -> Response:
        database, migrations = self.database()
        checks = {"database": database, "migrations": migrations, "redis": self.redis()}
        failing = [part for part, state in checks.items() if state not in ("ok", "not_configured")]
        if failing:
            return _json({"status": "unavailable", "failing": failing, "checks": checks}, 503)
        return _json({"status": "ready", "checks": checks})


class Front:
    def __init__(self, app, wrapped):
        self.app, self.wrapped = app, wrapped
        self.trusted = bool(app.config.get("PORTCULLIS_TRUSTED_PROXIES"))
        self.token = (app.config.get("PORTCULLIS_METRICS_TOKEN") or "").encode()
        self.readiness = Readiness(app)

    def __call__(self, environ, start_response):
        rid = logs.request_id_for(environ, self.trusted)
        environ[logs.ENVIRON_KEY] = rid
        logs.REQUEST_ID.set(rid)

        def with_id(status, headers, exc_info=None):
            headers[:] = [h for h in headers if h[0].lower() != "x-request-id"]
            headers.append(("X-Request-Id", rid))
            return start_response(status, headers, exc_info)

        path = environ.get("PATH_INFO", "")
        if path not in PATHS:
            return self.wrapped(environ, with_id)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            response = _json({"error": {"code": "method_not_allowed", "message": "GET only"}}, 405)
            response.headers["Allow"] = "GET, HEAD"
        elif path == "/healthz":
            response = _json({"status": "ok"})
        elif path == "/readyz":
            response = self.readiness.answer()
        else:
            response = self.metrics(environ)
        return response(environ, with_id)

    def metrics(self, environ) -> Response:
        if self.token:
            given = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                response = _json({"error": {"code": "unauthorized", "message": "send the metrics token as "
                                            "Authorization: Bearer <PORTCULLIS_METRICS_TOKEN>"}}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return response
        from .metrics import exposition

        body, content_type = exposition()
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def mount(app) -> None:
    app.wsgi_app = Front(app, app.wsgi_app)
