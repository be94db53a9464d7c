"""What the hot paths (/mcp and /proxy) read instead of the database.

A ``Snapshot`` holds every MCP server's configuration (shared headers decrypted once), every
HTTP service of the proxy route (root credential decrypted once) and the virtual keys seen so
far, with their grants. It is replaced when a commit in this process touched keys, grants,
servers, services or users (immediately), and at the latest every
``PORTCULLIS_CONFIG_CACHE_SECONDS`` (default 5 s), which bounds how long an edit made by another
instance takes to reach this one if its announcement is lost (app/cluster.py announces every
such commit to the other instances, which drop their snapshot within a second). Readers never
lock: they take the current object.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from flask import current_app
from sqlalchemy import Text, event, select, type_coerce
from sqlalchemy.orm import Session, selectinload

from . import access
from .access import Allowlist, KeyView
from .extensions import db
from .models import McpServer, OAuthConsent, Service, User, VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant

WATCHED = (McpServer, Service, VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant, User, OAuthConsent)
MAX_KEYS = 50_000  # cached key lookups (found or not) per snapshot


@dataclass(frozen=True)
class ServerView:
    id: int
    name: str
    url: str
    auth_type: str
    enabled: bool
    allow_all: bool
    headers: tuple[tuple[str, str], ...]
    per_user_header_keys: tuple[str, ...]
    tools: tuple[dict, ...]
    connect_timeout: float
    read_timeout: float
    tools_refreshed_at: datetime | None
    capabilities: dict | None = None  # as the upstream announced them at discovery

    def offers(self, feature: str) -> bool:
        """Whether the upstream announced this capability (resources, prompts, completions, logging)."""
        return isinstance(self.capabilities, dict) and isinstance(self.capabilities.get(feature), dict)

    @cached_property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t.get("name") for t in self.tools)

    def endpoint(self, headers: tuple[tuple[str, str], ...]):
        from .upstream.client import Endpoint

        return Endpoint(self.id, self.name, self.url, headers, self.connect_timeout, self.read_timeout)

    @cached_property
    def shared_endpoint(self):
        """The endpoint with the server's own (shared) headers, built once per snapshot."""
        return self.endpoint(self.headers)


@dataclass(frozen=True)
class ServiceView:
    """An HTTP service of the proxy route. ``credential`` is the (header, value) pair injected
    upstream, None when the stored secret cannot be decrypted (a missing encryption key) or is
    empty (``secret_set`` False: imported without it, never sent upstream)."""

    id: int
    name: str
    description: str
    base_url: str
    credential: tuple[str, str] | None = field(repr=False)
    secret_set: bool = True

    @cached_property
    def url(self):
        """The base URL parsed once per snapshot (httpx.URL)."""
        import httpx

        return httpx.URL(self.base_url)


@dataclass(frozen=True)
class ConsentView:
    """A live OAuth consent (what every access token names in ``portcullis_grant``)."""
    id: int
    user_id: int
    user_active: bool
    mode: str
    key_id: int | None


@dataclass
class Snapshot:
    generation: int
    loaded_at: float
    servers: dict[int, ServerView]
    by_name: dict[str, ServerView]
    services: dict[int, ServiceView] = field(default_factory=dict)
    services_by_name: dict[str, ServiceView] = field(default_factory=dict)
    _keys: dict[str, KeyView | None] = field(default_factory=dict)
    _by_id: dict[int, KeyView | None] = field(default_factory=dict)
    _allowlists: dict[int, Allowlist] = field(default_factory=dict)
    _user_allowlists: dict[int, Allowlist] = field(default_factory=dict)
    _user_keys: dict[int, tuple[KeyView, ...]] = field(default_factory=dict)
    _consents: dict[int, ConsentView | None] = field(default_factory=dict)

    def key(self, key_hash: str) -> KeyView | None:
        """The key with this secret hash (None: unknown). One query the first time."""
        try:
            return self._keys[key_hash]
        except KeyError:
            pass
        row = db.session.scalar(select(VirtualKey).where(VirtualKey.key_hash == key_hash).options(*_KEY_LOADS))
        view = None
        if row is not None:
            first = _own_view(row)  # the row just read, never an older view of that id; issuers by id
            self._by_id.pop(row.id, None)
            view = access.resolve_key(row.id, lambda i: first if i == row.id else self._own(i), self._by_id)
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[key_hash] = view
        return view

    def key_by_id(self, key_id: int) -> KeyView | None:
        """The key with this id as the gateway sees it (owner and issuers folded in, see
        app/access.py); None: unknown. One query per key and issuer the first time."""
        if len(self._by_id) >= MAX_KEYS:
            self._by_id.clear()
        return access.resolve_key(key_id, self._own, self._by_id)

    @staticmethod
    def _own(key_id: int) -> KeyView | None:
        row = db.session.scalar(select(VirtualKey).where(VirtualKey.id == key_id).options(*_KEY_LOADS))
        return None if row is None else _own_view(row)

    def allowlist(self, key: KeyView | None) -> Allowlist:
        """A key's effective allowlist (``None``: an anonymous development caller's), cached per
        key for the life of this snapshot. The rule: app/access.py."""
        if key is None:
            return access.key_allowlist(None, self.servers)
        cached = self._allowlists.get(key.id)
        if cached is None:
            cached = self._allowlists[key.id] = access.key_allowlist(key, self.servers)
        return cached

    def consent(self, consent_id: int) -> ConsentView | None:
        """The consent if it is live (not revoked, not deleted); None otherwise. One query the
        first time; revoking a consent is a commit that replaces the snapshot."""
        try:
            return self._consents[consent_id]
        except KeyError:
            pass
        row = db.session.execute(
            select(OAuthConsent.id, OAuthConsent.user_id, User.active, OAuthConsent.mode, OAuthConsent.virtual_key_id)
            .join(User, User.id == OAuthConsent.user_id)
            .where(OAuthConsent.id == consent_id, OAuthConsent.revoked_at.is_(None))).first()
        view = None if row is None else ConsentView(*row)
        if len(self._consents) >= MAX_KEYS:
            self._consents.clear()
        self._consents[consent_id] = view
        return view

    def user_keys(self, user_id: int, now: datetime) -> tuple[KeyView, ...]:
        """The usable keys a person owns (one query for their ids the first time)."""
        cached = self._user_keys.get(user_id)
        if cached is None:
            ids = db.session.scalars(select(VirtualKey.id).where(VirtualKey.owner_id == user_id)
                                     .order_by(VirtualKey.id)).all()
            cached = self._user_keys[user_id] = tuple(v for v in map(self.key_by_id, ids)
                                                      if v is not None and v.usable(now))
        return cached

    def user_allowlist(self, user_id: int, now: datetime) -> Allowlist:
        """A person's allowlist: the union over the usable keys they own, cached with this
        snapshot."""
        cached = self._user_allowlists.get(user_id)
        if cached is None:
            keys = self.user_keys(user_id, now)
            cached = self._user_allowlists[user_id] = access.union(self.allowlist(k) for k in keys)
        return cached


_KEY_LOADS = (selectinload(VirtualKey.owner), selectinload(VirtualKey.server_grants),
              selectinload(VirtualKey.service_grants))


def _own_view(row: VirtualKey) -> KeyView:
    return access.own_view(
        id=row.id, name=row.name, owner_id=row.owner_id,
        owner_active=None if row.owner is None else row.owner.active, active=row.active,
        expires_at=row.expires_at, rate_limit_per_minute=row.rate_limit_per_minute, source=row.source,
        agent_id=row.agent_id,
        server_grants={g.mcp_server_id: None if g.tools is None else frozenset(g.tools) for g in row.server_grants},
        service_grants={g.service_id: g.scope for g in row.service_grants})


class Holder:
    """One app's current snapshot (``app.extensions["snapshot"]``)."""

    def __init__(self):
        self.current: Snapshot | None = None
        self.lock = threading.Lock()


_generation = [0]  # bumped by any commit that touched configuration, in this process


def invalidate() -> None:
    _generation[0] += 1


def _fresh(snap: Snapshot | None, ttl: float) -> bool:
    return snap is not None and snap.generation == _generation[0] and time.monotonic() - snap.loaded_at < ttl


def current() -> Snapshot:
    holder: Holder = current_app.extensions["snapshot"]
    ttl = current_app.config["PORTCULLIS_CONFIG_CACHE_SECONDS"]
    snap = holder.current
    if _fresh(snap, ttl):
        return snap
    with holder.lock:
        if not _fresh(holder.current, ttl):
            holder.current = _load()
        return holder.current


def _load() -> Snapshot:
    generation = _generation[0]
    servers = {}
    for s in db.session.scalars(select(McpServer)):
        servers[s.id] = ServerView(
            id=s.id, name=s.name, url=s.url, auth_type=s.auth_type, enabled=s.enabled,
            allow_all=s.allow_on_all_virtual_keys,
            headers=tuple(sorted((s.shared_headers or {}).items())),
            per_user_header_keys=tuple(s.per_user_header_keys or ()),
            tools=tuple(s.tools or ()), connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
            tools_refreshed_at=s.tools_refreshed_at, capabilities=s.capabilities)
    services = _load_services()
    return Snapshot(generation=generation, loaded_at=time.monotonic(), servers=servers,
                    by_name={s.name: s for s in servers.values()},
                    services=services, services_by_name={s.name: s for s in services.values()})


def _load_services() -> dict[int, ServiceView]:
    """Every service with its credential decrypted, row by row: a secret that cannot be
    decrypted disables that service only (the proxy answers 500 decryption_failed for it)."""
    from .crypto import DecryptionError, keyring
    from .models.services import credential_pair

    ring = keyring()
    raw_secret = type_coerce(Service.__table__.c.secret, Text())  # the stored token, not decrypted
    out = {}
    rows = db.session.execute(select(Service.id, Service.name, Service.description, Service.base_url,
                                     Service.credential_header, raw_secret))
    for sid, name, description, base_url, header, token in rows:
        try:
            secret = ring.decrypt(token, "services.secret")
        except DecryptionError:
            credential, secret = None, None
        else:
            credential = credential_pair(header, secret) if secret else None
        out[sid] = ServiceView(id=sid, name=name, description=description or "", base_url=base_url,
                               credential=credential, secret_set=secret != "")
    return out


BOOKKEEPING = frozenset({"last_used_at", "updated_at", "last_seen_at"})  # columns no cache holds


def on_commit_touching(classes: tuple, callback, name: str) -> None:
    """Call ``callback`` after every commit whose flushes added, changed or deleted an instance
    of ``classes`` (in any session of this process), or that ran a bulk UPDATE/DELETE statement
    on their tables (beyond bookkeeping columns), and tell the other instances to do the same
    (app/cluster.py). A rolled-back change calls nothing."""
    from . import cluster

    flag = "portcullis_changed:" + name
    tables = frozenset(c.__table__.name for c in classes)
    cluster.register(name, callback)

    @event.listens_for(Session, "after_flush")
    def _note(session, _flush_context):
        if flag not in session.info and any(
                isinstance(obj, classes) for obj in (*session.new, *session.dirty, *session.deleted)):
            session.info[flag] = True

    @event.listens_for(Session, "do_orm_execute")
    def _bulk(state):
        if not (state.is_update or state.is_delete) or flag in state.session.info:
            return
        if getattr(getattr(state.statement, "table", None), "name", None) not in tables:
            return
        values = getattr(state.statement, "_values", None) if state.is_update else None
        if values is not None and {getattr(c, "key", str(c)) for c in values} <= BOOKKEEPING:
            return  # e.g. the proxy's last_used_at write
        state.session.info[flag] = True

    @event.listens_for(Session, "after_commit")
    def _committed(session):
        if session.info.pop(flag, False):
            callback()
            cluster.publish((name,))

    @event.listens_for(Session, "after_rollback")
    def _rolled_back(session):
        session.info.pop(flag, None)


on_commit_touching(WATCHED, invalidate, "config")
