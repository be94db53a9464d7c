"""Sending one proxied request upstream and relaying the answer, streamed both ways.

Headers are passed byte for byte (latin-1), minus hop-by-hop headers, the agent's key, every
incoming identity header, cookies and forwarding headers; the service's root credential and
the identity headers are set last. Bodies are never read whole: the request body is handed
to httpx as an iterator over the WSGI input, the answer is relayed chunk by chunk.
"""
from __future__ import annotations

import base64
import errno
import json
import logging
import re
from urllib.parse import unquote_to_bytes

import httpx

from ..identity import QUERY_KEY, query_pairs
from ..oauth_server.tokens import looks_like_jwt

log = logging.getLogger("portcullis.proxy")
CHUNK = 256 * 1024  # request body read size

# RFC 9110 7.6.1 plus the old ones; and what a proxy must not pass on for its own reasons.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
REQUEST_DROPPED = HOP_BY_HOP | frozenset({
    "host",  # set from the service's URL
    "x-virtual-key",  # the agent's key
    "cookie",  # a browser's dashboard session must never reach an upstream
    "expect",  # 100-continue is between the client and Portcullis
    "forwarded", "x-real-ip",  # the upstream's client is Portcullis
})
RESPONSE_DROPPED = HOP_BY_HOP | frozenset({
    "set-cookie", "set-cookie2",  # an upstream must not set cookies on Portcullis's origin
    "service-worker-allowed",  # nor widen a service worker's scope beyond its own path
    "clear-site-data",  # nor wipe the dashboard's storage and logins
    "x-content-type-options", "cross-origin-resource-policy",  # ours (ANSWER_HEADERS) win
    "server", "date",  # the WSGI server answering sets its own (gunicorn always does)
})
# On every answer served on /proxy, relayed or our own: the answer is never a document of the
# dashboard's origin. ``sandbox`` gives a browser-rendered answer an opaque origin without
# scripts, forms or plugins; the fetch directives allow it to load nothing. An upstream's own
# Content-Security-Policy is relayed beside this one: browsers enforce every policy, so it can
# only restrict further. Tools (curl, SDKs, fetch() with CORS) ignore all three headers.
SANDBOX_POLICY = ("sandbox; default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
                  "form-action 'none'")
ANSWER_HEADERS = (
    ("Content-Security-Policy", SANDBOX_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
# Method-override channels that some frameworks (Rails, Laravel, Express, Spring, ASP.NET)
# honour: a read grant must not turn a GET into a DELETE through them.
METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
METHOD_OVERRIDE_PARAM = "_method"
_NOT_ASCII_PRINTABLE = re.compile(rb"[^\x21-\x7e]")


class UpstreamFailed(Exception):
    """No answer from the upstream; ``status`` is 502 or 504, ``str()`` is safe to show."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def new_transport() -> httpx.HTTPTransport:
    """The pooled transport, not an httpx.Client: no cookie jar, no redirects followed, no
    proxies from the environment, no default headers added."""
    return httpx.HTTPTransport(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64,
                                                   keepalive_expiry=60))


def _escape(raw: bytes) -> str:
    """Percent-encode what cannot stand in a URL as is (space, controls, non-ASCII); existing
    escapes and everything else stay byte for byte."""
    return _NOT_ASCII_PRINTABLE.sub(lambda m: b"%%%02X" % m.group()[0], raw).decode("ascii")


def has_dot_segment(raw_path: bytes) -> bool:
    """``.`` or ``..`` as a path segment, also percent-encoded (%2e%2e), beside an encoded slash
    or with path parameters (``..;x``: Tomcat, Jetty and Spring drop ``;params`` before resolving
    dot segments): refused, so that no request climbs out of the service's base path."""
    for segment in raw_path.split(b"/"):
        for part in re.split(rb"[/\\]", unquote_to_bytes(segment)):
            if part.partition(b";")[0] in (b".", b".."):
                return True
    return False


def has_method_override(raw_query: bytes) -> bool:
    """A ``_method`` query parameter (any case, also percent-encoded)."""
    return any(name.lower() == METHOD_OVERRIDE_PARAM for _, name, _ in query_pairs(raw_query))


def forwarded_query(raw_query: bytes, secret: str | None) -> bytes:
    """The query string without ``key`` parameters nor any value holding the key; the other
    parameters stay byte for byte, in order."""
    return b"&".join(part for part, name, value in query_pairs(raw_query)
                     if name != QUERY_KEY and not (secret and secret in value))


def upstream_url(base: httpx.URL, rest: bytes, query: bytes) -> str:
    """The service's base URL + the rest of the proxied path + the query string (parsed once,
    by httpx, when the request is built)."""
    path = base.raw_path.partition(b"?")[0]
    base_query = base.query
    if rest:
        path = path.rstrip(b"/") + rest
    elif not path:
        path = b"/"
    if base_query and query:
        query = base_query + b"&" + query
    elif base_query:
        query = base_query
    origin = f"{base.scheme}://{base.netloc.decode('ascii')}"
    return origin + _escape(path) + ("?" + _escape(query) if query else "")


def request_headers(items, secret: str | None, identity_prefixes: tuple[str, ...],
                    credential: tuple[str, str], identity: list[tuple[str, str]],
                    also_dropped: frozenset[str] = frozenset(), issuer: str | None = None) -> list[tuple[bytes, bytes]]:
    """What goes upstream: the client's headers minus what must not pass (and ``also_dropped``,
    and an OAuth access token of ``issuer``: Portcullis's own tokens never reach a service),
    then the root credential and the identity headers (set by Portcullis only)."""
    items = list(items)
    dropped = set(REQUEST_DROPPED)
    dropped.add(credential[0].lower())
    dropped.update(also_dropped)
    for name, value in items:
        if name.lower() == "connection":
            dropped.update(t.strip().lower() for t in value.split(",") if t.strip())
    out = []
    for name, value in items:
        low = name.lower()
        if low in dropped or low.startswith(identity_prefixes) or low.startswith("x-forwarded-"):
            continue
        if low == "authorization" and (_is_key_bearer(value) or _is_own_token(value, issuer)):
            continue
        if secret and secret in value:  # the key, wherever the client put it, never leaves
            continue
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    out.append((credential[0].encode("latin-1"), credential[1].encode("latin-1")))
    for name, value in identity:
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


def _is_own_token(value: str, issuer: str | None) -> bool:
    """``Bearer <a JWT whose iss is Portcullis>`` (decoded, not verified: only to drop it)."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if issuer is None or scheme.lower() != "bearer" or not looks_like_jwt(token):
        return False
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, RecursionError):
        return False
    return isinstance(claims, dict) and claims.get("iss") == issuer


def _is_key_bearer(value: str) -> bool:
    scheme, _, token = value.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip().startswith("vk_")


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    dropped = set(RESPONSE_DROPPED)
    for name, value in raw:
        if name.lower() == b"connection":
            dropped.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    out = []
    for name, value in raw:
        low = name.decode("latin-1").lower()
        if low in dropped or low.startswith("ratelimit-"):  # RateLimit-* is the key's budget here
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def body_chunks(stream):
    while True:
        data = stream.read(CHUNK)
        if not data:
            return
        yield data


def send(transport: httpx.HTTPTransport, method: str, url: str, headers, content,
         timeouts: dict, service: str) -> httpx.Response:
    """One request upstream; the answer's body is still to be read. Failures to get an answer
    become ``UpstreamFailed`` (502 unreachable or broken, 504 timeout)."""
    request = httpx.Request(method, url, headers=headers, content=content, extensions={"timeout": timeouts})
    try:
        return transport.handle_request(request)
    except httpx.TimeoutException as e:
        log.warning("proxy %s %s: upstream timed out (%s)", method, service, type(e).__name__)
        what = "accept a connection" if isinstance(e, httpx.ConnectTimeout) else "answer"
        raise UpstreamFailed(504, "upstream_timeout", f"service {service} did not {what} in time") from None
    except httpx.ConnectError as e:
        log.warning("proxy %s %s: upstream unreachable (%s)", method, service, type(e).__name__)
        raise UpstreamFailed(502, "upstream_unreachable", f"service {service} is unreachable") from None
    except httpx.TransportError as e:
        log.warning("proxy %s %s: upstream failed (%s)", method, service, type(e).__name__)
        raise UpstreamFailed(502, "upstream_failed",
                             f"service {service} closed the connection without a valid answer") from None


def relay(response: httpx.Response, service: str):
    """The upstream's body, chunk by chunk, as it arrives. If the upstream breaks off, the
    client's connection is reset (an OSError the WSGI server handles quietly), so a truncated
    body is never passed off as complete."""
    try:
        for chunk in response.stream:
            if chunk:
                yield chunk
    except httpx.HTTPError as e:
        log.warning("proxy %s: upstream answer broken off (%s)", service, type(e).__name__)
        raise ConnectionResetError(errno.ECONNRESET, "upstream answer broken off") from None
    finally:
        response.close()
