"""MCP servers: the validation rules for auth types and headers live here, once."""
from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select

from ..audit import record
from ..extensions import db
from ..upstream.client import UpstreamError
from ..credentials import DISCOVERABLE
from ..credentials.store import headers_for
from ..upstream.discovery import refresh
from ..models import McpServer
from ..models.oauth import loopback_redirect
from ..models.servers import AUTH_TYPES, OAUTH_TYPES
from .errors import Conflict, Invalid, NotFound
from .fields import HEADER_NAME_RE, HEADER_VALUE_RULE, Fields, header_value_ok, missing, valid_id

FIELDS = {"name", "url", "auth_type", "headers", "per_user_header_keys", "sample_headers", "oauth",
          "allow_on_all_virtual_keys", "enabled", "connect_timeout", "read_timeout"}
MAX_TIMEOUT = 600.0
OAUTH_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "revocation_endpoint")
OAUTH_FIELDS = {"client_id", "client_secret", "scopes", "authorization_server", *OAUTH_ENDPOINTS}
MAX_OAUTH_VALUE = 512  # client_id, client_secret
# Headers Portcullis itself controls on upstream requests; an admin may not override them.
RESERVED_HEADERS = {"host", "content-length", "content-type", "accept", "connection", "transfer-encoding",
                    "keep-alive", "upgrade", "te", "trailer", "proxy-authorization", "proxy-connection",
                    "mcp-session-id", "mcp-protocol-version", "last-event-id"}


def get_server(server_id: int) -> McpServer:
    server = db.session.get(McpServer, server_id) if valid_id(server_id) else None
    if server is None:
        raise NotFound("no such MCP server")
    return server


def canonical_keys(keys) -> list[str]:
    return sorted({k.strip().lower() for k in keys})


def _header_keys(f: Fields):
    """per_user_header_keys: a list of header names, canonical (trimmed, lower-case), sorted."""
    if not f.has("per_user_header_keys"):
        return None
    raw = f.data["per_user_header_keys"]
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        f.fail("per_user_header_keys", "must be a list of header names")
        return None
    seen = set()
    for k in raw:
        c = k.strip().lower()
        if not c:
            f.fail("per_user_header_keys", "must not contain an empty key")
            return None
        if not HEADER_NAME_RE.match(c):
            f.fail("per_user_header_keys", f"{k.strip()[:64]!r} is not a valid header name")
            return None
        if c in RESERVED_HEADERS:
            f.fail("per_user_header_keys", f"{c} is set by Portcullis and cannot be a per-user key")
            return None
        if c in seen:
            f.fail("per_user_header_keys", f"{c} appears more than once (keys compare case-insensitively)")
            return None
        seen.add(c)
    return sorted(seen)


def _headers(f: Fields, partial: bool):
    """headers: {name: value}. On update a null value removes that header (values are write-only,
    so an edit names only what changes)."""
    if not f.has("headers"):
        return None
    raw = f.data["headers"]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        f.fail("headers", "must be an object of header name to value")
        return None
    out, seen = {}, set()
    for name, value in raw.items():
        clean = name.strip() if isinstance(name, str) else ""
        if not HEADER_NAME_RE.match(clean):
            f.fail("headers", f"{clean[:64]!r} is not a valid header name")
            return None
        if clean.lower() in RESERVED_HEADERS:
            f.fail("headers", f"{clean} is set by Portcullis and cannot be configured")
            return None
        if clean.lower() in seen:
            f.fail("headers", f"{clean} appears more than once")
            return None
        seen.add(clean.lower())
        if value is None and partial:
            out[clean] = None
            continue
        if not isinstance(value, str) or not value.strip():
            f.fail("headers", f"the value of {clean} must be a non-empty string")
            return None
        if not header_value_ok(value):
            f.fail("headers", f"the value of {clean} {HEADER_VALUE_RULE}")
            return None
        out[clean] = value
    return out


def _sample_headers(f: Fields):
    """sample_headers: {per-user key: value} used once to verify a per_user_headers server; the
    values are never stored, logged or echoed. Names compare case-insensitively; values are kept
    exactly as typed."""
    if not f.has("sample_headers"):
        return None
    raw = f.data["sample_headers"]
    if raw is None:
        return None
    if not isinstance(raw, dict):
        f.fail("sample_headers", "must be an object of header name to value")
        return None
    out = {}
    for name, value in raw.items():
        clean = name.strip().lower() if isinstance(name, str) else ""
        if not HEADER_NAME_RE.match(clean):
            f.fail("sample_headers", f"{clean[:64]!r} is not a valid header name")
            return None
        if clean in out:
            f.fail("sample_headers", f"{clean} appears more than once (names compare case-insensitively)")
            return None
        if not isinstance(value, str) or not value:
            f.fail("sample_headers", f"the value of {clean} must be a non-empty string")
            return None
        if not header_value_ok(value):
            f.fail("sample_headers", f"the value of {clean} {HEADER_VALUE_RULE}")
            return None
        out[clean] = value
    return out


def _check_samples(f: Fields, keys: list, samples: dict | None, needed: bool) -> None:
    """Samples, when given or needed, name exactly the per-user keys."""
    if samples is None:
        if needed:
            f.fail("sample_headers", "a sample value for every per-user key is needed to verify the server: "
                                     + ", ".join(keys))
        return
    absent = [k for k in keys if k not in samples]
    extra = sorted(set(samples) - set(keys))
    if absent:
        f.fail("sample_headers", "missing a sample value for: " + ", ".join(absent))
    elif extra:
        f.fail("sample_headers", "not per-user keys of this server: " + ", ".join(extra))


def _verify_with_samples(server: McpServer, samples: dict) -> None:
    """initialize + tools/list with exactly the sample values (per-user keys win over shared
    headers); the discovered tools are stored, the samples are not."""
    try:
        refresh(server, headers_for(server.shared_headers, server.per_user_header_keys or (), samples))
    except UpstreamError as e:
        raise Invalid(f"the upstream refused the sample headers or is unreachable: {e}",
                      {"sample_headers": f"verification failed: {e}"}) from None


def _oauth(f: Fields):
    if not f.has("oauth"):
        return None
    raw = f.data["oauth"]
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        f.fail("oauth", "must be an object")
        return None
    unknown = set(raw) - OAUTH_FIELDS
    if unknown:
        f.fail("oauth", "unknown settings: " + ", ".join(sorted(unknown)))
        return None
    sub = Fields(raw, OAUTH_FIELDS, partial=True)
    out = {}
    for name in ("client_id", "client_secret"):
        v = sub.string(name, max_len=MAX_OAUTH_VALUE)
        if not missing(v) and v:
            out[name] = v
    v = sub.url("authorization_server", required=False)
    if not missing(v):
        out["authorization_server"] = v
    for name in OAUTH_ENDPOINTS:  # tokens travel to these: https, or http only on the loopback
        v = sub.url(name, required=False)
        if missing(v) or not v:
            continue
        if urlsplit(v).scheme != "https" and not loopback_redirect(v):
            sub.fail(name, "must be an https:// URL (http:// only to a loopback address)")
        else:
            out[name] = v
    if "scopes" in raw:
        scopes = raw["scopes"]
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes):
            sub.fail("scopes", "must be a list of scope names")
        else:
            out["scopes"] = scopes
    if sub.errors:
        f.fail("oauth", "; ".join(f"{k} {v}" for k, v in sub.errors.items()))
        return None
    return out


def _check_combination(f: Fields, auth_type, headers: dict, keys: list, oauth) -> None:
    """Rules that depend on several fields, checked on the final state (create or after a patch)."""
    if auth_type == "per_user_headers":
        if not keys:
            f.fail("per_user_header_keys", "a per_user_headers server needs at least one header key")
    elif keys:
        f.fail("per_user_header_keys", "only per_user_headers servers take per-user header keys")
    if auth_type == "headers" and not headers:
        f.fail("headers", "a headers server needs at least one header")
    if auth_type == "none" and headers:
        f.fail("headers", "a server with auth_type none sends no headers; choose auth_type headers")
    if oauth and auth_type not in OAUTH_TYPES:
        f.fail("oauth", "OAuth settings apply only to oauth and per_user_oauth servers")
    if oauth and any(oauth.get(n) for n in OAUTH_ENDPOINTS):
        # entered endpoints replace discovery, so nothing says where to register: the admin's client
        if not (oauth.get("authorization_endpoint") and oauth.get("token_endpoint")):
            f.fail("oauth", "authorization_endpoint and token_endpoint go together (revocation_endpoint needs them)")
        elif not oauth.get("client_id"):
            f.fail("oauth", "entered endpoints need a client_id registered at that authorization server")
    clash = {h.lower() for h in headers} & set(keys)
    if clash:
        f.fail("headers", "shared headers cannot also be per-user keys: " + ", ".join(sorted(clash)))


def _name_taken(name: str, except_id: int | None = None) -> bool:
    q = select(McpServer.id).where(McpServer.name == name)
    if except_id is not None:
        q = q.where(McpServer.id != except_id)
    return db.session.scalar(q) is not None


RESERVED_NAMES = {"portcullis"}  # /mcp names Portcullis's own tools portcullis__<tool>


def _server_name(f: Fields, required: bool):
    name = f.name(required=required)
    if not missing(name) and name in RESERVED_NAMES:
        f.fail("name", f"{name} is reserved for Portcullis's own tools")
    return name


def create_server(data: dict) -> McpServer:
    f = Fields(data, FIELDS)
    name = _server_name(f, required=True)
    url = f.url("url")
    auth_type = f.choice("auth_type", AUTH_TYPES)
    auth_type = "none" if missing(auth_type) else auth_type
    headers = _headers(f, partial=False) or {}
    keys = _header_keys(f) or []
    samples = _sample_headers(f)
    oauth = _oauth(f) or None
    allow_all = f.boolean("allow_on_all_virtual_keys")
    enabled = f.boolean("enabled")
    connect_timeout = f.number("connect_timeout", lo=0.1, hi=MAX_TIMEOUT)
    read_timeout = f.number("read_timeout", lo=0.1, hi=MAX_TIMEOUT)
    if not f.errors:
        _check_combination(f, auth_type, headers, keys, oauth)
    if not f.errors:
        if auth_type == "per_user_headers":
            _check_samples(f, keys, samples, needed=missing(enabled) or enabled)
        elif samples is not None:
            f.fail("sample_headers", "only per_user_headers servers take sample headers")
    f.done()
    if _name_taken(name):
        raise Conflict("an MCP server with this name exists", {"name": "is already taken"})
    server = McpServer(name=name, url=url, auth_type=auth_type, shared_headers=headers,
                       per_user_header_keys=keys, oauth_config=oauth,
                       allow_on_all_virtual_keys=False if missing(allow_all) else allow_all,
                       enabled=True if missing(enabled) else enabled, tools=[],
                       connect_timeout=5.0 if missing(connect_timeout) else connect_timeout,
                       read_timeout=30.0 if missing(read_timeout) else read_timeout)
    if server.enabled and server.auth_type in DISCOVERABLE:
        _discover(server)
    elif server.enabled and auth_type == "per_user_headers" and samples is not None:
        _verify_with_samples(server, samples)
    db.session.add(server)
    db.session.flush()
    record("mcp_server.create", server, f"auth_type={auth_type}, headers={','.join(sorted(headers))}, "
                                        f"tools={len(server.tools)}")
    return server


def _discover(server: McpServer) -> None:
    """initialize + tools/list at the upstream; an unreachable server is refused (422)."""
    try:
        refresh(server)
    except UpstreamError as e:
        raise Invalid(f"cannot discover the server's tools: {e}", {"url": f"unreachable or not MCP: {e}"}) from None


def refresh_tools(server: McpServer, actor=None) -> McpServer:
    """Re-read the upstream's tools on demand (page, API, CLI). OAuth servers are read with the
    shared token (``oauth``) or the refreshing admin's own one (``per_user_oauth``)."""
    if server.auth_type in OAUTH_TYPES:
        from ..upstream_oauth.connect import tools_headers

        before = {t.get("name") for t in server.tools or []}
        headers = tools_headers(server, actor)
        try:
            refresh(server, headers)
        except UpstreamError as e:
            raise Invalid(f"cannot discover the server's tools: {e}", {"url": f"unreachable or refused: {e}"}) \
                from None
    elif server.auth_type not in DISCOVERABLE:
        raise Conflict(f"a {server.auth_type} server's tools are discovered with a member's credentials, "
                       "not on demand")
    else:
        before = {t.get("name") for t in server.tools or []}
        _discover(server)
    after = {t.get("name") for t in server.tools}
    record("mcp_server.refresh_tools", server,
           f"tools={len(after)}, added={len(after - before)}, removed={len(before - after)}")
    return server


class ServerUpdate:
    """What an update changed (the page says whether anything did). Credentials react by
    themselves: a change of the per-user keys is a reconciliation trigger."""

    def __init__(self, server: McpServer, changed: list[str]):
        self.server, self.changed = server, changed


def update_server(server: McpServer, data: dict) -> ServerUpdate:
    f = Fields(data, FIELDS, partial=True)
    name = _server_name(f, required=False)
    url = f.url("url", required=False)
    auth_type = f.choice("auth_type", AUTH_TYPES)
    header_patch = _headers(f, partial=True)
    keys = _header_keys(f)
    samples = _sample_headers(f)
    oauth = _oauth(f)
    allow_all = f.boolean("allow_on_all_virtual_keys")
    enabled = f.boolean("enabled")
    connect_timeout = f.number("connect_timeout", lo=0.1, hi=MAX_TIMEOUT)
    read_timeout = f.number("read_timeout", lo=0.1, hi=MAX_TIMEOUT)
    f.done()

    new_type = server.auth_type if missing(auth_type) else auth_type
    headers = dict(server.shared_headers or {})
    if header_patch is not None:
        lower = {h.lower(): h for h in headers}
        for h, v in header_patch.items():
            headers.pop(lower.get(h.lower(), h), None)
            if v is not None:
                headers[h] = v
    old_keys = list(server.per_user_header_keys or [])
    if keys is None:  # not mentioned: kept, unless the auth type no longer uses them
        keys = old_keys if new_type == "per_user_headers" else []
    new_oauth = server.oauth_config if oauth is None else (oauth or None)
    if oauth and server.oauth_config and "client_secret" not in oauth and server.oauth_config.get("client_secret"):
        new_oauth = {**oauth, "client_secret": server.oauth_config["client_secret"]}
    if new_type not in OAUTH_TYPES and oauth is None:
        new_oauth = None
    _check_combination(f, new_type, headers, keys, new_oauth)
    if not f.errors:
        if new_type == "per_user_headers":
            new_enabled = server.enabled if missing(enabled) else enabled
            # What agents are served must be what this configuration reaches: a new URL, a new
            # key set, a switch to per_user_headers or re-enabling needs fresh samples.
            needed = new_enabled and (
                canonical_keys(keys) != canonical_keys(old_keys) or server.auth_type != new_type
                or (not missing(url) and url != server.url) or (new_enabled and not server.enabled))
            _check_samples(f, keys, samples, needed)
        elif samples is not None:
            f.fail("sample_headers", "only per_user_headers servers take sample headers")
    f.done()

    if not missing(name) and name != server.name and _name_taken(name, server.id):
        raise Conflict("an MCP server with this name exists", {"name": "is already taken"})

    changed = []
    for attr, value in (("name", name), ("url", url), ("auth_type", auth_type),
                        ("allow_on_all_virtual_keys", allow_all), ("enabled", enabled),
                        ("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not missing(value) and getattr(server, attr) != value:
            setattr(server, attr, value)
            changed.append(attr)
    if headers != (server.shared_headers or {}):
        server.shared_headers = headers
        changed.append("headers")
    keys_changed = canonical_keys(keys) != canonical_keys(old_keys)
    if keys_changed:
        server.per_user_header_keys = keys
        changed.append("per_user_header_keys")
    if new_oauth != server.oauth_config:
        server.oauth_config = new_oauth
        changed.append("oauth")
    reach = {"url", "auth_type", "headers", "enabled", "connect_timeout", "read_timeout"}
    if server.enabled and server.auth_type in DISCOVERABLE and reach & set(changed):
        _discover(server)  # what is served to agents must be what this configuration reaches
    elif server.enabled and server.auth_type == "per_user_headers" and samples is not None:
        _verify_with_samples(server, samples)
    if changed:
        record("mcp_server.update", server, "changed " + ", ".join(changed))
    return ServerUpdate(server, changed)


def delete_server(server: McpServer):
    """Deletes the server (the caller commits) and returns what to run after the commit: the
    revocation of an ``oauth`` server's shared token at the upstream (read before the rows go;
    its failure is logged and never undoes the deletion)."""
    from ..upstream_oauth.connect import revoke_later

    after = revoke_later(server)
    record("mcp_server.delete", server)
    db.session.delete(server)
    return after
