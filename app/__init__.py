"""Portcullis: a self-hosted gateway that lets AI agents act with each person's own credentials."""
from __future__ import annotations

import logging
import os

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.routing import IntegerConverter

from .config import load_config, private_sqlite_file
from .extensions import csrf, db, limiter, migrate
from .ops.fields import MAX_ID

log = logging.getLogger("portcullis")

# Every answer Flask serves (dashboard pages and fragments, the API, static files, Flask's own
# error pages; not /mcp and /proxy, answered in front of it): never framed, never sniffed, no
# Referer to other sites, and scripts and styles only from this origin. The pages satisfy this
# policy: htmx and the little JS are files in static/, nothing is inline, and htmx neither injects
# its indicator <style> nor evaluates code (includeIndicatorStyles/allowEval off in base.html).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(test_config: dict | None = None) -> Flask:
    instance = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("PORTCULLIS_INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None,
                instance_relative_config=True,
                template_folder="../templates", static_folder="../static")
    app.config.update(load_config(app.instance_path, test_config))
    _logging(app)

    from .crypto import Keyring
    app.extensions["keyring"] = Keyring(app.config["PORTCULLIS_ENCRYPTION_KEYS"])

    from .auth import DashboardCookieSessions
    app.session_interface = DashboardCookieSessions()

    db.init_app(app)
    with app.app_context():
        private_sqlite_file(db.engine.url, app.instance_path)  # before anything connects
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(app.root_path), "migrations"))
    csrf.init_app(app)
    limiter.init_app(app)

    from . import models  # noqa: F401  (register every table with the metadata)
    from .credentials import reconcile  # noqa: F401  (its session events keep credentials in line with grants)
    from .api import bp as api_bp
    from .web import bp as web_bp

    from .upstream.client import UpstreamClient
    from .mcp.sessions import McpSessionStore
    from .snapshot import Holder

    app.extensions["snapshot"] = Holder()
    app.extensions["mcp_client"] = UpstreamClient()
    app.extensions["mcp_sessions"] = McpSessionStore()
    from .mcp import streams
    streams.init_app(app)  # GET /mcp streams, shared upstream sessions (app/mcp/streams.py)

    app.url_map.converters["id"] = IdConverter
    app.after_request(_security_headers)
    app.register_blueprint(web_bp)
    from .sso import init_app as init_sso
    init_sso(app)  # dashboard login through the team's OpenID provider, when configured
    app.register_blueprint(api_bp)
    csrf.exempt(api_bp)  # bearer tokens, not cookies: no CSRF exposure
    from .oauth_server import register as register_oauth_server
    register_oauth_server(app)  # discovery, /oauth/* and the consent page (app/oauth_server)
    _scope_limiter(app, ("web", "api", "oauth"))

    from .mcp.wsgi import mount
    mount(app)  # /mcp is answered in front of Flask's dispatch (see app/mcp/wsgi.py)
    from .proxy import register as register_proxy
    register_proxy(app)  # so is /proxy (see app/proxy/__init__.py)
    if app.config["PORTCULLIS_TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = app.config["PORTCULLIS_TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    from .operations import mount as mount_operations
    mount_operations(app)  # outermost: request ids, /healthz, /readyz, /metrics (app/operations.py)
    if not app.config["PORTCULLIS_ENFORCE_AUTH"]:
        log.warning("PORTCULLIS_ENFORCE_AUTH=false: /mcp serves callers WITHOUT credentials as anonymous "
                    "sessions with every allow-all server. Use this for local development only.")

    from .cli import register as register_cli
    register_cli(app)
    if not app.config.get("TESTING"):
        from .sweep import start_background
        start_background(app)  # expired flows, old orphaned credentials (see app/sweep.py)
        from .cluster import start as start_invalidation
        start_invalidation(app)  # other instances' edits reach this one within a second (app/cluster.py)

    for name in app.config["PORTCULLIS_GENERATED_SECRETS"]:
        log.warning("%s was not set: generated a strong one into %s (mode 0600); "
                    "set it in the environment to manage it yourself", name,
                    os.path.join(app.instance_path, "secrets.env"))
    return app


def decimal_up_to(n: int) -> str:
    """A regular expression of the decimal numbers 1..n (ASCII digits, no sign, no leading zero)."""
    digits = str(n)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same_length = [f"{digits[:i]}[{lo}-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}"
                   for i, (d, lo) in enumerate(zip(digits, "1" + "0" * len(digits))) if int(d) > int(lo)]
    return "|".join([*shorter, *same_length, digits])


class IdConverter(IntegerConverter):
    """``<id:name>`` in every route that takes an object id: 1..MAX_ID. Anything else (0, a
    38-digit number) matches no route, so it is a 404 like an unknown id and never reaches the
    database driver, which cannot hold it. The range is in the pattern itself: a value the pattern
    took but the converter refused would be a 405 where the path has routes for other methods."""

    regex = decimal_up_to(MAX_ID)

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _scope_limiter(app: Flask, blueprints: tuple[str, ...]) -> None:
    """Flask-Limiter hooks every request of the app. Only these blueprints have limits, so its
    hooks move to them and the agents' hot path (/mcp) does none of that work."""
    from functools import partial

    def ours(fn) -> bool:
        return getattr(fn, "__self__", None) is limiter or (isinstance(fn, partial) and limiter in fn.args)

    for registry in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        hooks = registry.get(None, [])
        moved = [fn for fn in hooks if ours(fn)]
        registry[None] = [fn for fn in hooks if not ours(fn)]
        for name in blueprints:
            registry.setdefault(name, []).extend(moved)


def _logging(app: Flask) -> None:
    from .logs import configure

    configure()  # text or JSON (PORTCULLIS_LOG_FORMAT), each line with its request id (app/logs.py)
    # Authlib logs issued tokens and authorization codes at DEBUG: never, whatever the root level.
    logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger("authlib").getEffectiveLevel()))


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    """SQLite: enforce foreign keys (ON DELETE CASCADE) and let readers run beside a writer."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()
