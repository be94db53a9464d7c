"""The credential-injecting HTTP proxy: ANY /proxy/<service>/<path> (query string kept).

A request flows one way: virtual key (``X-Virtual-Key``, ``Authorization: Bearer vk_...`` or
``?key=``) -> not a browser opening a link with the key (403) -> key known (401) -> key active
and not expired (401) -> grant for this service (403) -> the grant's scope allows the method
(403) -> the key's rate limit (429) -> upstream, with the key removed from all three places,
the root credential injected and the identity headers set -> the answer, streamed back.

Whatever an upstream returns never runs as the dashboard: every answer on /proxy carries a
sandboxing Content-Security-Policy, nosniff and CORP (``forward.ANSWER_HEADERS``); a browser
navigation with the key only in ``?key=`` is refused, so a link cannot open a proxied page in
an admin's browser; and with PORTCULLIS_PROXY_BASE_URL the proxy has a host of its own, which
serves nothing else, while the dashboard's host refuses /proxy.

Like /mcp, /proxy is answered in front of Flask's request dispatch (``ProxyEndpoint``): a plain
WSGI call inside an app context, without Flask's request context, URL routing, cookie session
and the dashboard's and API's hooks, none of which the proxy needs; measured, they cost more
CPU than the proxy's own work (bench/proxy_overhead.py). The hot path reads the in-memory
snapshot only (no database query per request); the key's ``last_used_at`` is written at most
once a minute per key and process, after the answer. Query strings are never logged: a key may
be in ``?key=``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from urllib.parse import quote, unquote, urljoin, urlsplit

from flask import Flask, current_app
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wrappers import Response
from werkzeug.wsgi import get_input_stream

from .. import identity, metrics
from ..credentials import CredentialUnavailable, SecretNotSet, service_credential
from ..extensions import db
from ..models.base import utcnow
from ..models.keys import VirtualKey
from . import forward
from .limits import KeyLimits, LimitsUnavailable

log = logging.getLogger("portcullis.proxy")
PREFIX = "/proxy"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})  # TRACE would echo the injected credential back
LAST_USED_INTERVAL = 60.0  # seconds between two last_used_at writes of one key (per process)
KEY_HINT = "send a virtual key in X-Virtual-Key, Authorization: Bearer vk_... or ?key="
KEY_IN_LINK = ("keys in links are for tools, not browsers: a browser opening a /proxy link with ?key= is "
               "refused, so that no proxied page runs beside your dashboard login; call it from a tool, with "
               "the key in X-Virtual-Key or Authorization: Bearer")


class Relayed(Response):
    """The upstream's answer as it is: no default Content-Type added."""

    default_mimetype = None


def error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    return Response(body, status=status, mimetype="application/json", headers=headers)


# -- the route ------------------------------------------------------------------------------

def handle(environ, service: str) -> Response:
    """One proxied request (in an app context); ``service`` is the name in the path."""
    cfg = current_app.config
    method = environ["REQUEST_METHOD"].upper()
    if method in REFUSED_METHODS:
        return error(405, "method_not_allowed", f"{method} is not proxied",
                     {"Allow": "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"})
    raw_query = environ.get("QUERY_STRING", "").encode("latin-1")

    # 1-2. who is calling: a key, known, active, not expired (401; app/identity.py)
    try:
        caller = identity.resolve(environ, "proxy")
    except identity.Refusal as e:
        if e.code == "key_in_link":
            return error(403, e.code, KEY_IN_LINK)
        message = e.message + (": " + KEY_HINT if e.code == "missing_key" else "")
        return error(e.status, e.code, message, {"WWW-Authenticate": 'Bearer realm="portcullis"'})
    key = caller.key
    # 3. granted this service (403); an unknown service looks the same
    svc = caller.snapshot.services_by_name.get(service)
    scope = caller.service_scope(svc.id) if svc is not None else None
    if scope is None:
        if not service:
            return error(403, "service_not_granted", "name a service: /proxy/<service>/<path>")
        return error(403, "service_not_granted", f"this key has no grant for service {service[:60]!r}")
    # 4. the scope allows the method (403), also through a method override
    if scope == "read":
        if method not in READ_METHODS:
            return error(403, "read_only", f"this key's grant for {service} is read-only: "
                         "GET, HEAD and OPTIONS only")
        if raw_query and forward.has_method_override(raw_query):
            return error(403, "read_only", f"this key's grant for {service} is read-only: "
                         f"a {forward.METHOD_OVERRIDE_PARAM} query parameter is not allowed")
    # 5. rate limit (429)
    try:
        budget = current_app.extensions["proxy_limits"].hit_all(key.budgets)
    except LimitsUnavailable:
        if not cfg["PORTCULLIS_RATE_LIMIT_FAIL_OPEN"]:
            return error(503, "rate_limit_unavailable", "the rate-limit store is unreachable; retry shortly",
                         {"Retry-After": "5"})
        budget = None  # configured to pass unlimited
    limit_headers = budget.headers() if budget is not None else {}
    if budget is not None and not budget.allowed:
        metrics.RATE_LIMITED.labels("proxy").inc()
        return error(429, "rate_limited", f"rate limit of {budget.limit} requests per minute reached for this "
                     f"key; retry in {budget.reset_in} s", limit_headers)

    answer = _forward(cfg, environ, method, service, svc, caller, scope, raw_query)
    answer.headers.update(limit_headers)
    usage: Usage = current_app.extensions["proxy_usage"]
    if usage.due(key.id):
        answer.call_on_close(usage.writer(current_app._get_current_object(), key.id))
    return answer


def _forward(cfg, environ, method, service, svc, caller, scope, raw_query) -> Response:
    try:
        credential = service_credential(svc, caller)
    except SecretNotSet as e:
        return error(503, "secret_not_set", str(e))
    except CredentialUnavailable as e:
        return error(500, "decryption_failed", str(e))
    key, secret = caller.key, caller.secret
    rest = _rest_of_path(environ, service)
    if forward.has_dot_segment(rest):
        return error(400, "invalid_path", "the path must not contain . or .. segments")
    url = forward.upstream_url(svc.url, rest, forward.forwarded_query(raw_query, secret))

    prefix = cfg["PORTCULLIS_IDENTITY_HEADER_PREFIX"]
    identity_headers = [(f"{prefix}-Key-ID", str(key.id))]
    if key.source == "mcp" and key.agent_id:
        identity_headers.append((f"{prefix}-Agent-ID", _header_value(key.agent_id)))
    prefixes = tuple({prefix.lower() + "-", "x-portcullis-"})
    overrides = forward.METHOD_OVERRIDE_HEADERS if scope == "read" else frozenset()
    headers = forward.request_headers(_headers(environ), secret, prefixes, credential, identity_headers, overrides,
                                      issuer=cfg["PORTCULLIS_BASE_URL"])

    try:
        content = _request_body(environ, cfg["PORTCULLIS_PROXY_MAX_BODY_BYTES"] or None)
    except RequestEntityTooLarge:
        return _too_large(cfg)
    if isinstance(content, Response):
        return content
    timeouts = {"connect": cfg["PORTCULLIS_PROXY_CONNECT_TIMEOUT"], "read": cfg["PORTCULLIS_PROXY_READ_TIMEOUT"],
                "write": cfg["PORTCULLIS_PROXY_READ_TIMEOUT"], "pool": cfg["PORTCULLIS_PROXY_CONNECT_TIMEOUT"]}
    try:
        upstream = forward.send(current_app.extensions["proxy_transport"], method, url, headers, content,
                                timeouts, service)
    except forward.UpstreamFailed as e:
        metrics.UPSTREAM_ERRORS.labels("proxy", service).inc()
        return error(e.status, e.code, str(e))
    except RequestEntityTooLarge:
        return _too_large(cfg)
    except ClientDisconnected:
        return error(400, "incomplete_body", "the request body ended before its announced length")

    out = forward.response_headers(upstream.headers.raw)
    location = upstream.headers.get("location")
    if location:
        out = [(k, _proxied_location(cfg, service, svc, url, v) if k.lower() == "location" else v) for k, v in out]
    reason = upstream.extensions.get("reason_phrase", b"").decode("latin-1").strip()
    status = f"{upstream.status_code} {reason}" if reason else upstream.status_code
    answer = Relayed(forward.relay(upstream, service), status=status, headers=out)
    answer.call_on_close(upstream.close)  # also when no body is sent (HEAD, 204, 304)
    return answer


def _too_large(cfg) -> Response:
    return error(413, "too_large", f"the request body exceeds {cfg['PORTCULLIS_PROXY_MAX_BODY_BYTES']} bytes "
                 "(PORTCULLIS_PROXY_MAX_BODY_BYTES)")


# -- pieces ---------------------------------------------------------------------------------

def _headers(environ):
    """The request's headers from the WSGI environ, as (name, value) in latin-1 strings."""
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                yield key[5:].replace("_", "-").title(), value
        elif key == "CONTENT_TYPE" and value:
            yield "Content-Type", value
        elif key == "CONTENT_LENGTH" and value:
            yield "Content-Length", value


def _rest_of_path(environ, service: str) -> bytes:
    """The path after /proxy/<service>, as the client encoded it (%2F stays %2F)."""
    script = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    mount = script + PREFIX + "/" + service
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    raw_path = raw.partition("?")[0]
    if "://" in raw_path[:10]:  # absolute-form request target
        raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
    if raw_path.startswith(mount) and unquote(raw_path, encoding="latin-1") == script + path_info:
        return raw_path[len(mount):].encode("latin-1")
    rest = (script + path_info)[len(mount):]  # no raw URI from the server: re-encode the decoded path
    return quote(rest, safe="/:@!$&'()*+,;=~").encode("ascii") if rest.isascii() else \
        quote(rest.encode("latin-1"), safe="/:@!$&'()*+,;=~").encode("ascii")


def _request_body(environ, max_bytes: int | None):
    """The request body as an iterator over the WSGI input (None: no body)."""
    length = environ.get("CONTENT_LENGTH", "").strip()
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not length and not chunked:
        return None
    if chunked and not length and "wsgi.input_terminated" not in environ:
        return error(411, "length_required", "this server cannot read a chunked request body; send Content-Length")
    if length == "0":
        return b""
    stream = get_input_stream(environ, safe_fallback=False, max_content_length=max_bytes)
    return forward.body_chunks(stream)


def _proxied_location(cfg, service: str, svc, url, location: str) -> str:
    """A redirect to a place under the service's base URL points back through the proxy."""
    absolute = urljoin(str(url), location)
    base = str(svc.url).rstrip("/")
    if absolute == base or absolute.startswith(base + "/") or absolute.startswith(base + "?"):
        return public_url(cfg, service) + absolute[len(base):]
    return location


def public_url(cfg, service: str) -> str:
    """Where agents call a service: on the proxy's own host when PORTCULLIS_PROXY_BASE_URL is set."""
    return (cfg["PORTCULLIS_PROXY_BASE_URL"] or cfg["PORTCULLIS_BASE_URL"]) + PREFIX + "/" + service


def host_values(base_url: str) -> frozenset[str]:
    """The Host header values that name the origin ``base_url`` (with and without its default port)."""
    parts = urlsplit(base_url)
    netloc = parts.netloc.lower()
    default = 443 if parts.scheme == "https" else 80
    if parts.port is None:
        return frozenset({netloc, f"{netloc}:{default}"})
    if parts.port == default:
        return frozenset({netloc, netloc.rpartition(":")[0]})
    return frozenset({netloc})


def _header_value(value: str) -> str:
    return value if value.isascii() and value.isprintable() else quote(value, safe="")


# -- last_used_at ---------------------------------------------------------------------------

class Usage:
    """Throttles ``last_used_at`` writes: one per key per ``LAST_USED_INTERVAL`` per process,
    done after the answer was sent, as a plain UPDATE (no snapshot invalidation)."""

    def __init__(self, interval: float = LAST_USED_INTERVAL, max_tracked: int = 100_000):
        self.interval, self.max_tracked = interval, max_tracked
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def due(self, key_id: int) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key_id)
            if last is not None and now - last < self.interval:
                return False
            if len(self._last) >= self.max_tracked:
                self._last.clear()
            self._last[key_id] = now
            return True

    @staticmethod
    def writer(app: Flask, key_id: int):
        def write():
            table = VirtualKey.__table__
            with app.app_context():
                try:
                    db.session.execute(update(table).where(table.c.id == key_id)
                                       .values(last_used_at=utcnow(), updated_at=table.c.updated_at))
                    db.session.commit()
                except SQLAlchemyError as e:
                    db.session.rollback()
                    log.warning("could not record last_used_at of key %s: %s", key_id, type(e).__name__)
        return write


# -- wiring ---------------------------------------------------------------------------------

class ProxyEndpoint:
    """/proxy and /proxy/<service>[/<path>] answered in front of Flask; other paths go on.

    With PORTCULLIS_PROXY_BASE_URL set, the request's host decides first: /proxy is answered on
    the proxy's host only (421 elsewhere), and that host answers nothing but /proxy (404)."""

    def __init__(self, app: Flask, wrapped):
        self.app, self.wrapped = app, wrapped
        self._hosts: tuple[str | None, frozenset[str] | None] = (None, None)  # (proxy base URL, its hosts)
        self.latency = metrics.REQUEST_SECONDS.labels("proxy")

    def proxy_hosts(self) -> frozenset[str] | None:
        url = self.app.config["PORTCULLIS_PROXY_BASE_URL"]
        known, hosts = self._hosts
        if url != known:  # computed once per configured value
            hosts = host_values(url) if url else None
            self._hosts = (url, hosts)
        return hosts

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        proxied = path == PREFIX or path.startswith(PREFIX + "/")
        hosts = self.proxy_hosts()
        if hosts is not None and proxied != (environ.get("HTTP_HOST", "").lower() in hosts):
            if proxied:
                response = error(421, "wrong_host", "the proxy is served on its own host: "
                                 f"{self.app.config['PORTCULLIS_PROXY_BASE_URL']}{PREFIX}/<service>/<path>")
            else:
                response = error(404, "not_found", f"this host serves the proxy only: {PREFIX}/<service>/<path>")
        elif proxied:
            started = time.perf_counter()
            service = path[len(PREFIX) + 1:].partition("/")[0]
            with self.app.app_context():  # its teardown returns any database session
                try:
                    response = handle(environ, service)
                except Exception:
                    log.exception("unhandled error on %s %s", PREFIX, service[:40])  # never the query
                    response = error(500, "internal_error", "internal error")
            self.latency.observe(time.perf_counter() - started)
            # a made-up service name is never a label
            snap = self.app.extensions["snapshot"].current
            known = service if snap is not None and service in snap.services_by_name else ""
            metrics.PROXY_REQUESTS.labels(known, str(response.status_code)).inc()
        else:
            return self.wrapped(environ, start_response)

        def sandboxed(status, headers, exc_info=None):  # every answer here; a list extend, no re-validation
            headers.extend(forward.ANSWER_HEADERS)
            return start_response(status, headers, exc_info)
        return response(environ, sandboxed)


def register(app: Flask) -> None:
    app.extensions["proxy_transport"] = forward.new_transport()
    app.extensions["proxy_limits"] = KeyLimits(app.config.get("RATELIMIT_KEY_PREFIX") or "")
    app.extensions["proxy_usage"] = Usage()
    app.wsgi_app = ProxyEndpoint(app, app.wsgi_app)
