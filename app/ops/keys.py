"""Virtual keys and their grants."""
from __future__ import annotations

from sqlalchemy import select

from ..audit import record
from ..extensions import db
from ..models import McpServer, Service, User, VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant
from ..models.base import utcnow
from ..models.keys import SCOPES
from .errors import NotFound
from .fields import Fields, missing, valid_id

FIELDS = {"name", "owner_id", "agent_id", "rate_limit_per_minute", "expires_at", "active",
          "mcp_servers", "services"}
MAX_RATE_LIMIT = 100_000
MAX_KEY_NAME = 100
MAX_AGENT_ID = 200


def get_key(key_id: int, viewer: User | None = None) -> VirtualKey:
    """A key by id; a member viewer only finds their own keys (others are 'not found')."""
    key = db.session.get(VirtualKey, key_id) if valid_id(key_id) else None
    if key is None or (viewer is not None and not viewer.is_admin and key.owner_id != viewer.id):
        raise NotFound("no such virtual key")
    return key


def _server_grants(f: Fields):
    if not f.has("mcp_servers"):
        return None
    raw = f.data["mcp_servers"]
    if not isinstance(raw, list):
        f.fail("mcp_servers", "must be a list of {server_id, tools}")
        return None
    out = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"server_id", "tools"}:
            f.fail("mcp_servers", f"item {i} must be an object with server_id and tools")
            return None
        sid, tools = item.get("server_id"), item.get("tools")
        if isinstance(sid, bool) or not isinstance(sid, int):
            f.fail("mcp_servers", f"item {i}: server_id must be an integer")
            return None
        if sid in out:
            f.fail("mcp_servers", f"server {sid} is listed twice")
            return None
        if tools is not None:
            if not isinstance(tools, list) or not all(isinstance(t, str) and t.strip() for t in tools):
                f.fail("mcp_servers", f"item {i}: tools must be null (all tools) or a list of tool names")
                return None
            tools = sorted({t.strip() for t in tools})
        out[sid] = tools
    if out:
        known = set(db.session.scalars(select(McpServer.id).where(McpServer.id.in_(filter(valid_id, out)))))
        unknown = sorted(set(out) - known)
        if unknown:
            f.fail("mcp_servers", "unknown server id(s): " + ", ".join(map(str, unknown)))
            return None
    return out


def _service_grants(f: Fields):
    if not f.has("services"):
        return None
    raw = f.data["services"]
    if not isinstance(raw, list):
        f.fail("services", "must be a list of {service_id, scope}")
        return None
    out = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"service_id", "scope"}:
            f.fail("services", f"item {i} must be an object with service_id and scope")
            return None
        sid, scope = item.get("service_id"), item.get("scope", "read")
        if isinstance(sid, bool) or not isinstance(sid, int):
            f.fail("services", f"item {i}: service_id must be an integer")
            return None
        if scope not in SCOPES:
            f.fail("services", f"item {i}: scope must be read or write")
            return None
        if sid in out:
            f.fail("services", f"service {sid} is listed twice")
            return None
        out[sid] = scope
    if out:
        known = set(db.session.scalars(select(Service.id).where(Service.id.in_(filter(valid_id, out)))))
        unknown = sorted(set(out) - known)
        if unknown:
            f.fail("services", "unknown service id(s): " + ", ".join(map(str, unknown)))
            return None
    return out


def _read(f: Fields, creating: bool):
    values = {
        "name": f.string("name", required=creating, max_len=MAX_KEY_NAME, min_len=1),
        "owner_id": f.integer("owner_id", nullable=True),
        "agent_id": f.string("agent_id", max_len=MAX_AGENT_ID, nullable=True),
        "rate_limit_per_minute": f.integer("rate_limit_per_minute", lo=1, hi=MAX_RATE_LIMIT),
        "expires_at": f.future_datetime("expires_at", utcnow()),
        "active": f.boolean("active"),
    }
    owner_id = values["owner_id"]
    if not missing(owner_id) and owner_id is not None and (
            not valid_id(owner_id) or db.session.get(User, owner_id) is None):
        f.fail("owner_id", "no such user")
    servers = _server_grants(f)
    services = _service_grants(f)
    f.done()
    return {k: v for k, v in values.items() if not missing(v)}, servers, services


def _set_grants(key: VirtualKey, servers: dict | None, services: dict | None) -> list[str]:
    changed = []
    if servers is not None:
        current = {g.mcp_server_id: g for g in key.server_grants}
        if {s: g.tools for s, g in current.items()} != servers:  # compared before the grants change
            changed.append("mcp_servers")
        for sid in set(current) - set(servers):
            key.server_grants.remove(current[sid])
        for sid, tools in servers.items():
            if sid not in current:
                key.server_grants.append(VirtualKeyServerGrant(mcp_server_id=sid, tools=tools))
            elif current[sid].tools != tools:
                current[sid].tools = tools
    if services is not None:
        current = {g.service_id: g for g in key.service_grants}
        if {s: g.scope for s, g in current.items()} != services:
            changed.append("services")
        for sid in set(current) - set(services):
            key.service_grants.remove(current[sid])
        for sid, scope in services.items():
            if sid not in current:
                key.service_grants.append(VirtualKeyServiceGrant(service_id=sid, scope=scope))
            elif current[sid].scope != scope:
                current[sid].scope = scope
    return changed


def create_key(data: dict, source: str) -> tuple[VirtualKey, str]:
    """A new key; returns it with its secret, which is never shown again."""
    values, servers, services = _read(Fields(data, FIELDS), creating=True)
    key, secret = VirtualKey.generate(source=source, **values)
    db.session.add(key)
    _set_grants(key, servers or {}, services or {})
    db.session.flush()
    record("virtual_key.create", key,
           f"source={source}, servers={len(servers or {})}, services={len(services or {})}")
    return key, secret


def update_key(key: VirtualKey, data: dict) -> VirtualKey:
    values, servers, services = _read(Fields(data, FIELDS, partial=True), creating=False)
    changed = []
    for attr, value in values.items():
        if getattr(key, attr) != value:
            setattr(key, attr, value)
            changed.append(attr)
    changed += _set_grants(key, servers, services)
    if changed:
        action = "virtual_key.revoke" if changed == ["active"] and not key.active else "virtual_key.update"
        record(action, key, "changed " + ", ".join(changed))
    return key


def revoke_key(key: VirtualKey) -> VirtualKey:
    if key.active:
        key.active = False
        record("virtual_key.revoke", key)
    return key


def delete_key(key: VirtualKey) -> None:
    record("virtual_key.delete", key)
    db.session.delete(key)
