"""Moving a team to another instance: ``flask --app wsgi export`` / ``import``.

The document holds users (with their password hashes), MCP servers (with their settings and
discovered tools, and the *names* of their shared headers), services (without their secret),
virtual keys (their hashes, so issued keys keep working; owners, issuers, limits, expiry) and
their grants. No secret value: shared header values, service secrets and OAuth client secrets
stay behind (the import says what to set again), as do per-user credentials, logins, API
tokens, OAuth consents and signing keys (people sign in and connect again).

Import goes into an instance without servers, services and keys (a fresh one, whose first admin
may exist already: a user whose e-mail is taken is kept as it is and the document's references
point to it). It refuses a document of a newer version, and runs in one transaction: on any
error nothing is changed.
"""
from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select, text

from .extensions import db
from .models import McpServer, Service, User, VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant
from .models.base import iso, utcnow

FORMAT = "portcullis-export"
VERSION = 1
HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class ImportRefused(Exception):
    """The document cannot be imported; nothing was changed."""


def _dt(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImportRefused(f"not a date: {value!r}")
    try:
        return datetime.fromisoformat(value.removesuffix("Z"))
    except ValueError:
        raise ImportRefused(f"not a date: {value[:40]!r}") from None


def export_document() -> dict:
    users = db.session.scalars(select(User).order_by(User.id)).all()
    servers = db.session.scalars(select(McpServer).order_by(McpServer.id)).all()
    services = db.session.scalars(select(Service).order_by(Service.id)).all()
    keys = db.session.scalars(select(VirtualKey).order_by(VirtualKey.id)).all()
    return {
        "format": FORMAT, "version": VERSION, "exported_at": iso(utcnow()),
        "users": [{"id": u.id, "email": u.email, "role": u.role, "active": u.active,
                   "must_change_password": u.must_change_password, "password_hash": u.password_hash,
                   "created_at": iso(u.created_at)} for u in users],
        "mcp_servers": [{
            "id": s.id, "name": s.name, "url": s.url, "auth_type": s.auth_type,
            "shared_header_names": s.header_names(),  # values are secret: set them again
            "per_user_header_keys": list(s.per_user_header_keys or []),
            "oauth": ({k: v for k, v in s.oauth_config.items() if k != "client_secret"}
                      if s.oauth_config else None),
            "allow_on_all_virtual_keys": s.allow_on_all_virtual_keys, "enabled": s.enabled,
            "tools": list(s.tools or []), "tools_refreshed_at": iso(s.tools_refreshed_at),
            "connect_timeout": s.connect_timeout, "read_timeout": s.read_timeout,
            "created_at": iso(s.created_at)} for s in servers],
        "services": [{"id": s.id, "name": s.name, "description": s.description, "base_url": s.base_url,
                      "credential_header": s.credential_header, "created_at": iso(s.created_at)}
                     for s in services],
        "virtual_keys": [{
            "id": k.id, "name": k.name, "key_hash": k.key_hash, "key_prefix": k.key_prefix,
            "owner_id": k.owner_id, "source": k.source, "agent_id": k.agent_id,
            "rate_limit_per_minute": k.rate_limit_per_minute, "expires_at": iso(k.expires_at),
            "active": k.active, "created_at": iso(k.created_at),
            "mcp_servers": [{"server_id": g.mcp_server_id, "tools": g.tools} for g in k.server_grants],
            "services": [{"service_id": g.service_id, "scope": g.scope} for g in k.service_grants]} for k in keys],
    }


def _list(doc: dict, name: str) -> list[dict]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ImportRefused(f"{name} must be a list of objects")
    return value


def _field(obj: dict, name: str, kind, where: str, required: bool = True):
    if name not in obj or obj[name] is None:
        if required:
            raise ImportRefused(f"{where}: {name} is missing")
        return None
    value = obj[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ImportRefused(f"{where}: {name} has the wrong type")
    return value


def import_document(doc) -> dict:
    """Import (in the caller's transaction; the caller commits or rolls back). Returns counts and
    what must be set again. Raises ``ImportRefused``."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ImportRefused(f"not a Portcullis export (format must be {FORMAT!r})")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ImportRefused("version must be a positive integer")
    if version > VERSION:
        raise ImportRefused(f"this document is of version {version}, written by a newer Portcullis; "
                            f"this one reads up to version {VERSION}: upgrade it first")
    for model in (McpServer, Service, VirtualKey):
        if db.session.scalar(select(func.count()).select_from(model)):
            raise ImportRefused("this instance already has servers, services or keys: import into a fresh one")

    users = {}
    kept = []
    for u in _list(doc, "users"):
        where = f"user {u.get('email')!r}"
        email = _field(u, "email", str, where).strip().lower()
        existing = db.session.scalar(select(User).where(User.email == email))
        if existing is not None:
            users[_field(u, "id", int, where)] = existing
            kept.append(email)
            continue
        password_hash = _field(u, "password_hash", str, where)
        user = User(email=email, role=_field(u, "role", str, where), active=_field(u, "active", bool, where),
                    must_change_password=bool(_field(u, "must_change_password", bool, where, False)),
                    password_hash=password_hash, created_at=_dt(u.get("created_at")) or utcnow())
        db.session.add(user)
        users[_field(u, "id", int, where)] = user
    db.session.flush()

    to_set = []
    for s in _list(doc, "mcp_servers"):
        where = f"server {s.get('name')!r}"
        names = _field(s, "shared_header_names", list, where, False) or []
        if names:
            to_set.append(f"server {s['name']}: shared header value(s) {', '.join(map(str, names))}")
        oauth = _field(s, "oauth", dict, where, False)
        if oauth:
            to_set.append(f"server {s['name']}: OAuth client secret")
        db.session.add(McpServer(
            id=_field(s, "id", int, where), name=_field(s, "name", str, where), url=_field(s, "url", str, where),
            auth_type=_field(s, "auth_type", str, where), shared_headers={},
            per_user_header_keys=_field(s, "per_user_header_keys", list, where, False) or [],
            oauth_config=oauth, allow_on_all_virtual_keys=_field(s, "allow_on_all_virtual_keys", bool, where),
            enabled=_field(s, "enabled", bool, where), tools=_field(s, "tools", list, where, False) or [],
            tools_refreshed_at=_dt(s.get("tools_refreshed_at")),
            connect_timeout=_field(s, "connect_timeout", float, where, False) or 5.0,
            read_timeout=_field(s, "read_timeout", float, where, False) or 30.0,
            created_at=_dt(s.get("created_at")) or utcnow()))
    for s in _list(doc, "services"):
        where = f"service {s.get('name')!r}"
        to_set.append(f"service {s.get('name')}: secret")
        db.session.add(Service(
            id=_field(s, "id", int, where), name=_field(s, "name", str, where),
            description=_field(s, "description", str, where, False) or "",
            base_url=_field(s, "base_url", str, where),
            credential_header=_field(s, "credential_header", str, where, False) or "X-API-Key",
            secret="", created_at=_dt(s.get("created_at")) or utcnow()))
    db.session.flush()

    for k in _list(doc, "virtual_keys"):
        where = f"key {k.get('name')!r}"
        key_hash = _field(k, "key_hash", str, where)
        if not HASH_RE.match(key_hash):
            raise ImportRefused(f"{where}: key_hash must be 64 lower-case hex digits")
        owner = _field(k, "owner_id", int, where, False)
        if owner is not None and owner not in users:
            raise ImportRefused(f"{where}: owner_id {owner} is not a user of the document")
        key = VirtualKey(
            id=_field(k, "id", int, where), name=_field(k, "name", str, where), key_hash=key_hash,
            key_prefix=_field(k, "key_prefix", str, where), owner=users.get(owner),
            source=_field(k, "source", str, where), agent_id=_field(k, "agent_id", str, where, False),
            rate_limit_per_minute=_field(k, "rate_limit_per_minute", int, where),
            expires_at=_dt(k.get("expires_at")), active=_field(k, "active", bool, where),
            created_at=_dt(k.get("created_at")) or utcnow())
        for g in _field(k, "mcp_servers", list, where, False) or []:
            if not isinstance(g, dict):
                raise ImportRefused(f"{where}: mcp_servers must hold objects")
            key.server_grants.append(VirtualKeyServerGrant(mcp_server_id=_field(g, "server_id", int, where),
                                                           tools=_field(g, "tools", list, where, False)))
        for g in _field(k, "services", list, where, False) or []:
            if not isinstance(g, dict):
                raise ImportRefused(f"{where}: services must hold objects")
            key.service_grants.append(VirtualKeyServiceGrant(service_id=_field(g, "service_id", int, where),
                                                             scope=_field(g, "scope", str, where)))
        db.session.add(key)
    db.session.flush()
    _advance_sequences()
    return {"users": len(users) - len(kept), "users_kept": kept,
            "mcp_servers": len(doc.get("mcp_servers", [])), "services": len(doc.get("services", [])),
            "virtual_keys": len(doc.get("virtual_keys", [])), "to_set": to_set}


def _advance_sequences() -> None:
    """Rows came with their ids: PostgreSQL's sequences must continue after them."""
    if db.engine.dialect.name != "postgresql":
        return
    for table in ("mcp_servers", "services", "virtual_keys"):
        db.session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"))
