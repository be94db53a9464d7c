"""Who is calling, for every door agents use (/mcp and /proxy): the credential presented, the
virtual key or OAuth access token it stands for, the binding mode its credentials are stored
under and the effective allowlist. The answer is a ``Caller`` or a ``Refusal`` with its code;
each door only renders it (/mcp as JSON-RPC, /proxy as JSON). Resolved from the in-memory
snapshot: no database query per request once a key (or a token's consent) has been seen.

Credentials: a virtual key (both doors), or on /mcp a JWT that Portcullis's authorization
server signed (told from a key by its shape; PORTCULLIS_MCP_AUTH says which are accepted).

Binding modes: a key with an owner binds credentials as ``user`` (that person), a key without
owner as ``vk``, an anonymous development caller (PORTCULLIS_ENFORCE_AUTH=false) as
``session`` (its MCP session). A token binds as its consent says: ``user`` (the person who
consented; tools: the union of their usable keys' allowlists), ``vk`` (exactly one of their
keys, which then binds as its owner like any key) or ``session``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from flask import current_app

from . import snapshot
from .access import Allowlist, KeyView
from .extensions import db
from .models.base import digest, utcnow
from .models.keys import KEY_PREFIX
from .oauth_server.metadata import resource_url
from .oauth_server.tokens import SCOPE, Claims, InvalidToken, looks_like_jwt
from .oauth_server.tokens import verify as verify_token
from .snapshot import Snapshot

MAX_KEY_LENGTH = 200
# Sec-Fetch-Dest values of a browser loading a document (a page, a frame, a plugin).
NAVIGATION_DESTS = frozenset({"document", "iframe", "frame", "embed", "object"})
QUERY_KEY = "key"  # /proxy: ?key=vk_... (a link for tools); /mcp takes credentials in headers only


class Refusal(Exception):
    """The caller may not pass this door: ``status`` (401/403), ``code`` and a ``message``
    safe to send."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Caller:
    snapshot: Snapshot
    allowlist: Allowlist
    key: KeyView | None = None  # the virtual key presented or named by a vk-mode token
    mcp_session: object | None = None  # /mcp: the caller's Mcp-Session-Id session, once known
    # the credential as presented: the proxy removes it from everything it forwards
    secret: str | None = field(default=None, repr=False)
    token: Claims | None = None  # an OAuth access token's verified claims

    @property
    def key_id(self) -> int | None:
        return None if self.key is None else self.key.id

    @property
    def user_id(self) -> int | None:
        """The person whose credentials the caller uses: the key's owner, or the person who
        consented to a user-mode token."""
        if self.key is not None:
            return self.key.owner_id
        if self.token is not None and self.token.mode == "user":
            return self.token.user_id
        return None

    @property
    def mode(self) -> str:
        """The binding mode of this caller's credentials: user, vk or session."""
        if self.user_id is not None:
            return "user"
        return "vk" if self.key is not None else "session"

    @property
    def identity(self):
        """The binding's identity: the user id, the key id, or the MCP session id (None before
        an anonymous caller has a session)."""
        mode = self.mode
        if mode == "user":
            return self.user_id
        if mode == "vk":
            return self.key.id
        return getattr(self.mcp_session, "id", None)

    @property
    def principal(self) -> str:
        """Whom an MCP session belongs to: another principal never gets to use it (a token's
        consent, a key, or nobody)."""
        if self.token is not None:
            return f"grant:{self.token.grant_id}"
        return f"key:{self.key.id}" if self.key is not None else "anonymous"

    def signed_in(self) -> bool:
        """The session gate (a user-mode token may use stored credentials, but starting a flow
        that asks the person for new ones needs the dashboard login that consented to be still
        active): False only for a user-mode token whose login has ended."""
        if self.token is None or self.token.mode != "user":
            return True
        from .models import Login

        login = db.session.get(Login, self.token.login_id)
        return login is not None and login.user_id == self.token.user_id and login.usable(utcnow())

    def service_scope(self, service_id: int) -> str | None:
        """read or write for a service this caller is granted (issuer limits applied); None."""
        if self.key is not None:  # the hot path: the key's own grant
            return self.key.service_grants.get(service_id)
        issuer = self.service_keys().get(service_id)
        return None if issuer is None else issuer.service_grants[service_id]

    def service_keys(self) -> dict[int, KeyView]:
        """For each service the caller may reach through the proxy, the key it does so with:
        its own key, or for a user-mode token the person's usable key with the widest grant
        (write before read, then the higher rate limit, then the later expiry)."""
        if self.key is not None:
            return {sid: self.key for sid in self.key.service_grants}
        if self.token is None or self.token.mode != "user":
            return {}
        best: dict[int, KeyView] = {}
        for key in self.snapshot.user_keys(self.token.user_id, utcnow()):
            for sid in key.service_grants:
                if sid not in best or _rank(key, sid) > _rank(best[sid], sid):
                    best[sid] = key
        return best

    def in_session(self, mcp_session) -> Caller:
        return replace(self, mcp_session=mcp_session)


def _rank(key: KeyView, service_id: int) -> tuple:
    return (key.service_grants[service_id] == "write", key.rate_limit_per_minute,
            key.expires_at is None, key.expires_at or 0)


def presented(environ, door: str) -> set[str]:
    """Every credential the request carries. /mcp: ``Authorization: Bearer <token>`` (any other
    scheme is refused) or ``X-Virtual-Key``. /proxy: ``X-Virtual-Key``, ``Authorization: Bearer
    vk_...`` (other Authorization values belong to the upstream) or ``?key=``, the last never
    from a browser opening a link (``key_in_link``: a proxied page must not run beside the
    dashboard's login)."""
    found = set()
    header = environ.get("HTTP_X_VIRTUAL_KEY", "").strip()
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    token = token.strip()
    if door == "mcp":
        if scheme:
            if scheme.lower() != "bearer" or not token:
                raise Refusal(401, "invalid_request", "unsupported Authorization scheme")
            return {token}
        return {header} if header else set()
    if header:
        found.add(header)
    if scheme.lower() == "bearer" and token.startswith(KEY_PREFIX):
        found.add(token)
    in_header = bool(found)
    for _, name, value in query_pairs(environ.get("QUERY_STRING", "").encode("latin-1")):
        if name == QUERY_KEY and value.strip():
            found.add(value.strip())
    if found and not in_header and len(found) == 1 and is_navigation(environ):
        raise Refusal(403, "key_in_link", "keys in links are for tools, not browsers")
    return found


def is_navigation(environ) -> bool:
    """A browser loading a page or a frame (Fetch Metadata). Browsers cannot add X-Virtual-Key
    or Authorization to a navigation, so a navigation carries its key in the link."""
    return (environ.get("HTTP_SEC_FETCH_MODE", "").lower() == "navigate"
            or environ.get("HTTP_SEC_FETCH_DEST", "").lower() in NAVIGATION_DESTS)


def query_pairs(raw_query: bytes):
    """(raw part, decoded name, decoded value) of each query parameter."""
    if not raw_query:
        return
    for part in raw_query.split(b"&"):
        name, _, value = part.partition(b"=")
        yield (part, unquote(name.replace(b"+", b" ").decode("latin-1")),
               unquote(value.replace(b"+", b" ").decode("latin-1")))


def resolve(environ, door: str, server_name: str | None = None) -> Caller:
    """The caller at ``door`` (/mcp: the endpoint of ``server_name``, or the aggregate one),
    or ``Refusal``."""
    tokens = presented(environ, door)
    snap = snapshot.current()
    accepts = current_app.config["PORTCULLIS_MCP_AUTH"] if door == "mcp" else "keys"
    if door == "mcp" and "access_token" in {name for _, name, _ in query_pairs(
            environ.get("QUERY_STRING", "").encode("latin-1"))}:
        raise Refusal(401, "invalid_request", "access tokens go in the Authorization header, never in the URL")
    if not tokens:
        if door == "mcp" and not current_app.config["PORTCULLIS_ENFORCE_AUTH"]:
            return Caller(snap, snap.allowlist(None))
        raise Refusal(401, "missing_key", "a virtual key is required" if accepts == "keys" else
                      "a virtual key or an OAuth access token is required" if accepts == "any" else
                      "an OAuth access token is required")
    if len(tokens) > 1:
        raise Refusal(401, "invalid_key", "several different virtual keys were presented; send one")
    secret = tokens.pop()
    if door == "mcp" and looks_like_jwt(secret):
        if accepts == "keys":
            raise Refusal(401, "invalid_token", "this server takes virtual keys only (PORTCULLIS_MCP_AUTH=keys)")
        return _token_caller(snap, secret, server_name)
    if accepts == "oauth":
        raise Refusal(401, "invalid_token", "this endpoint takes OAuth access tokens only")
    key = _key(snap, secret)
    return Caller(snap, snap.allowlist(key), key, secret=secret)


def _token_caller(snap: Snapshot, token: str, server_name: str | None) -> Caller:
    """A verified access token for this endpoint whose consent is live: the caller its consent
    chose (``invalid_token`` / ``insufficient_scope`` otherwise)."""
    try:
        claims = verify_token(token, resource_url(server_name))
    except InvalidToken as e:
        raise Refusal(401, "invalid_token", str(e)) from None
    if SCOPE not in claims.scopes:
        raise Refusal(403, "insufficient_scope", f"the token lacks the {SCOPE} scope")
    consent = snap.consent(claims.grant_id)
    if consent is None or (consent.user_id, consent.mode, consent.key_id) != (claims.user_id, claims.mode,
                                                                              claims.key_id):
        raise Refusal(401, "invalid_token", "the authorization behind this token was revoked")
    if not consent.user_active:
        raise Refusal(401, "invalid_token", "the person who authorized this token is deactivated")
    now = utcnow()
    if claims.mode == "vk":
        key = snap.key_by_id(claims.key_id)
        if key is None or not key.usable(now):
            raise Refusal(401, "invalid_token", "the virtual key this token acts as was revoked or has expired")
        return Caller(snap, snap.allowlist(key), key, token=claims)
    if claims.mode == "session":
        if current_app.config["PORTCULLIS_ENFORCE_AUTH"]:
            raise Refusal(401, "invalid_token", "development sessions are off (PORTCULLIS_ENFORCE_AUTH)")
        return Caller(snap, snap.allowlist(None), token=claims)
    return Caller(snap, snap.user_allowlist(claims.user_id, now), token=claims)


def _key(snap: Snapshot, secret: str) -> KeyView:
    """A usable virtual key: known (invalid_key), active (key_revoked: also its owner or
    issuer), not expired (key_expired)."""
    key = snap.key(digest(secret)) if secret.startswith(KEY_PREFIX) and len(secret) <= MAX_KEY_LENGTH else None
    if key is None:
        raise Refusal(401, "invalid_key", "unknown virtual key")
    if not key.active:
        raise Refusal(401, "key_revoked", "this virtual key was revoked or its owner deactivated")
    if not key.usable(utcnow()):
        raise Refusal(401, "key_expired", "this virtual key has expired")
    return key
