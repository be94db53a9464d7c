"""Who is calling, for every door agents use (/mcp and /proxy): the credential presented, the
virtual key or token it stands for, the binding mode its credentials are stored under and the
effective allowlist. The answer is a ``Caller`` or a ``Refusal`` with its code; each door only
renders it (/mcp as JSON-RPC, /proxy as JSON). Resolved from the in-memory snapshot: no
database query per request once a key has been seen.

Binding modes: a key with an owner binds credentials as ``user`` (that person), a key without
owner as ``vk``, an anonymous development caller (PORTCULLIS_ENFORCE_AUTH=false) as
``session`` (its MCP session).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from flask import current_app

from . import snapshot
from .access import Allowlist, KeyView
from .models.base import digest, utcnow
from .models.keys import KEY_PREFIX
from .snapshot import Snapshot

MAX_KEY_LENGTH = 200
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
    key: KeyView | None = None  # the virtual key presented (None: anonymous)
    mcp_session: object | None = None  # /mcp: the caller's Mcp-Session-Id session, once known
    # the credential as presented: the proxy removes it from everything it forwards
    secret: str | None = field(default=None, repr=False)

    @property
    def key_id(self) -> int | None:
        return None if self.key is None else self.key.id

    @property
    def user_id(self) -> int | None:
        """The person the caller acts for (the key's owner), if any."""
        return None if self.key is None else self.key.owner_id

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
        """Whom an MCP session belongs to: another principal never gets to use it."""
        return f"key:{self.key.id}" if self.key is not None else "anonymous"

    def service_scope(self, service_id: int) -> str | None:
        """read or write for a service this caller is granted (issuer limits applied); None."""
        return None if self.key is None else self.key.service_grants.get(service_id)

    def in_session(self, mcp_session) -> Caller:
        return replace(self, mcp_session=mcp_session)


def presented(environ, door: str) -> set[str]:
    """Every credential the request carries. /mcp: ``Authorization: Bearer <token>`` (any other
    scheme is refused) or ``X-Virtual-Key``. /proxy: ``X-Virtual-Key``, ``Authorization: Bearer
    vk_...`` (other Authorization values belong to the upstream) or ``?key=``."""
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
    for _, name, value in query_pairs(environ.get("QUERY_STRING", "").encode("latin-1")):
        if name == QUERY_KEY and value.strip():
            found.add(value.strip())
    return found


def query_pairs(raw_query: bytes):
    """(raw part, decoded name, decoded value) of each query parameter."""
    if not raw_query:
        return
    for part in raw_query.split(b"&"):
        name, _, value = part.partition(b"=")
        yield (part, unquote(name.replace(b"+", b" ").decode("latin-1")),
               unquote(value.replace(b"+", b" ").decode("latin-1")))


def resolve(environ, door: str) -> Caller:
    """The caller at ``door``, or ``Refusal``."""
    tokens = presented(environ, door)
    snap = snapshot.current()
    if not tokens:
        if door == "mcp" and not current_app.config["PORTCULLIS_ENFORCE_AUTH"]:
            return Caller(snap, snap.allowlist(None))
        raise Refusal(401, "missing_key", "a virtual key is required")
    if len(tokens) > 1:
        raise Refusal(401, "invalid_key", "several different virtual keys were presented; send one")
    secret = tokens.pop()
    key = _key(snap, secret)
    return Caller(snap, snap.allowlist(key), key, secret=secret)


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
