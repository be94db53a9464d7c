"""MCP tools of Portcullis itself, listed on /mcp beside the upstream tools:

- ``portcullis__list_services``: the HTTP services the caller's key is granted, with their
  proxy URL;
- ``portcullis__request_key``: a new short-lived virtual key (source ``mcp``) for one of those
  services, never with more access than the caller's own key (scope, rate limit, lifetime).

They are offered to callers that act with virtual keys, on the aggregate endpoint only
(``/mcp``, not ``/mcp/<server>``): a key, or an OAuth token of a person (``user`` mode), whose
services are those of their usable keys and whose issued keys are issued by the key that grants
the service most widely (so never wider than the person's union, and cut to that key for
life). Anonymous development callers hold no key, hence no services: the tools are not listed
for them and calling them is an unknown tool. Refusals are tool errors (``isError``) whose text
says what to change.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta

from flask import current_app, g
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..identity import Caller
from ..models.base import iso, utcnow
from ..models.keys import SCOPES
from ..proxy import public_url

log = logging.getLogger("portcullis.mcp")
PREFIX = "portcullis__"
LIST_SERVICES = PREFIX + "list_services"
REQUEST_KEY = PREFIX + "request_key"
DEFAULT_TTL = 3600
DEFAULT_RATE_LIMIT = 60
ARGUMENTS = ("service_name", "ttl_seconds", "rate_limit", "scope")

SERVICE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "scope": {"type": "string", "enum": list(SCOPES)},
        "proxy_url": {"type": "string", "format": "uri"},
    },
    "required": ["name", "description", "scope", "proxy_url"],
}
ISSUED_SCHEMA = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "description": "the new virtual key; shown once, never again"},
        "key_id": {"type": "integer"},
        "service": {"type": "string"},
        "scope": {"type": "string", "enum": list(SCOPES)},
        "rate_limit_per_minute": {"type": "integer", "minimum": 1},
        "expires_at": {"type": "string", "format": "date-time"},
        "proxy_url": {"type": "string", "format": "uri"},
    },
    "required": ["key", "key_id", "service", "scope", "rate_limit_per_minute", "expires_at", "proxy_url"],
}


def is_native(name: str) -> bool:
    return name.startswith(PREFIX)


def _holds_keys(caller: Caller) -> bool:
    return caller.key is not None or (caller.token is not None and caller.token.mode == "user")


def tools(caller: Caller) -> list[dict]:
    """The native tools this caller sees (none for an anonymous caller)."""
    if not _holds_keys(caller):
        return []
    max_ttl = current_app.config["PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS"]
    return [
        {
            "name": LIST_SERVICES,
            "title": "List HTTP services",
            "description": "The HTTP services this key may call through the Portcullis proxy, with the proxy URL "
                           "of each and the scope granted (read: GET/HEAD/OPTIONS; write: every method).",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
            "outputSchema": {"type": "object", "properties": {"services": {"type": "array", "items": SERVICE_SCHEMA}},
                             "required": ["services"]},
            "annotations": {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
        },
        {
            "name": REQUEST_KEY,
            "title": "Request a short-lived key for an HTTP service",
            "description": "Issue a new virtual key for one HTTP service this key is granted, to call it through "
                           "the Portcullis proxy (send the key as X-Virtual-Key or Authorization: Bearer). The new "
                           "key expires by itself and never has more access than this key: same or narrower scope, "
                           "rate limit at most this key's, lifetime at most this key's.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "service_name": {"type": "string", "description": "a service from " + LIST_SERVICES},
                    "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": max_ttl, "default": DEFAULT_TTL,
                                    "description": "lifetime of the key in seconds"},
                    "rate_limit": {"type": "integer", "minimum": 1, "default": DEFAULT_RATE_LIMIT,
                                   "description": "requests per minute; at most this key's own limit"},
                    "scope": {"type": "string", "enum": list(SCOPES),
                              "description": "read (GET/HEAD/OPTIONS) or write; default: this key's scope"},
                },
                "required": ["service_name"],
                "additionalProperties": False,
            },
            "outputSchema": ISSUED_SCHEMA,
            "annotations": {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": False,
                            "openWorldHint": False},
        },
    ]


def call(caller: Caller, name: str, arguments: dict) -> dict | None:
    """The CallToolResult of a native tool, or None when there is no such tool for this caller."""
    if not _holds_keys(caller):
        return None
    if name == LIST_SERVICES:
        return _list_services(caller, arguments)
    if name == REQUEST_KEY:
        return _request_key(caller, arguments)
    return None


# -- results --------------------------------------------------------------------------------

def _result(text: str, structured: dict) -> dict:
    return {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": False}


def _refuse(text: str) -> dict:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _proxy_url(service_name: str) -> str:
    return public_url(current_app.config, service_name)


# -- the tools ------------------------------------------------------------------------------

def _granted(caller: Caller) -> list[tuple]:
    services = caller.snapshot.services
    return sorted(((services[sid], key.service_grants[sid]) for sid, key in caller.service_keys().items()
                   if sid in services), key=lambda pair: pair[0].name)


def _list_services(caller: Caller, arguments: dict) -> dict:
    if arguments:
        return _refuse(f"{LIST_SERVICES} takes no arguments")
    services = [{"name": svc.name, "description": svc.description, "scope": scope, "proxy_url": _proxy_url(svc.name)}
                for svc, scope in _granted(caller)]
    if not services:
        text = "No HTTP service is granted to this key."
    else:
        text = "HTTP services granted to this key:\n" + "\n".join(
            f"- {s['name']} ({s['scope']}): {s['proxy_url']}" + (f" - {s['description']}" if s["description"] else "")
            for s in services)
    return _result(text, {"services": services})


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _request_key(caller: Caller, args: dict) -> dict:
    unknown = sorted(set(args) - set(ARGUMENTS))
    if unknown:
        return _refuse("unknown argument(s): " + ", ".join(unknown) + "; expected " + ", ".join(ARGUMENTS))

    name = args.get("service_name")
    if name is None:
        return _refuse(f"service_name is required: the name of a service from {LIST_SERVICES}")
    if not isinstance(name, str) or not name.strip():
        return _refuse("service_name must be a non-empty string")
    name = name.strip()
    svc = caller.snapshot.services_by_name.get(name)
    parent = caller.service_keys().get(svc.id) if svc is not None else None  # the key that issues it
    own_scope = parent.service_grants[svc.id] if parent is not None else None
    if own_scope is None:  # unknown and not granted look the same
        return _refuse(f"no service named {name[:60]!r} is granted to this key; {LIST_SERVICES} lists yours")

    now = utcnow()
    max_ttl = current_app.config["PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS"]
    remaining = None if parent.expires_at is None else int((parent.expires_at - now).total_seconds())
    if remaining is not None and remaining < 1:
        return _refuse("this key expires now; it cannot issue keys")
    ttl = args.get("ttl_seconds")
    if ttl is None:
        ttl = min(DEFAULT_TTL, max_ttl, remaining if remaining is not None else max_ttl)
    elif not _integer(ttl) or not 1 <= ttl <= max_ttl:
        return _refuse(f"ttl_seconds must be an integer from 1 to {max_ttl}")
    elif remaining is not None and ttl > remaining:
        return _refuse(f"ttl_seconds must be at most {remaining}: this key itself expires then")

    rate = args.get("rate_limit")
    own_rate = parent.rate_limit_per_minute
    if rate is None:
        rate = min(DEFAULT_RATE_LIMIT, own_rate)
    elif not _integer(rate) or not 1 <= rate <= own_rate:
        return _refuse(f"rate_limit must be an integer from 1 to {own_rate} (this key's own limit)")

    scope = args.get("scope")
    if scope is None:
        scope = own_scope
    elif scope not in SCOPES:
        return _refuse("scope must be read or write")
    elif scope == "write" and own_scope == "read":
        return _refuse(f"scope write is wider than this key's grant for {name} (read)")

    expires = (now + timedelta(seconds=ttl)).replace(microsecond=0)
    if expires <= now:
        expires = now.replace(microsecond=0) + timedelta(seconds=1)
    return _issue(parent, svc, scope, rate, expires)


def _issue(parent, svc, scope: str, rate: int, expires) -> dict:
    from ..ops.errors import OpError
    from ..ops.keys import create_key

    data = {
        "name": f"{svc.name} (request_key by key {parent.id})",
        "owner_id": parent.owner_id,
        "agent_id": f"vk:{parent.id}",  # the identity that asked: the calling key
        "rate_limit_per_minute": rate,
        "expires_at": expires.isoformat() + "Z",
        "services": [{"service_id": svc.id, "scope": scope}],
    }
    g.actor_key = (parent.id, parent.name)  # the audit event names the key that asked
    try:
        key, secret = create_key(data, source="mcp")
        db.session.commit()
    except OpError as e:  # the service or the owner went away meanwhile
        db.session.rollback()
        return _refuse(f"cannot issue a key: {e}")
    except SQLAlchemyError as e:
        db.session.rollback()
        log.warning("request_key by key %s failed: %s", parent.id, type(e).__name__)
        return _refuse("cannot issue a key right now; try again")
    structured = {"key": secret, "key_id": key.id, "service": svc.name, "scope": scope,
                  "rate_limit_per_minute": rate, "expires_at": iso(key.expires_at),
                  "proxy_url": _proxy_url(svc.name)}
    text = (f"New virtual key for {svc.name} (id {key.id}, scope {scope}, {rate} requests per minute, "
            f"expires {structured['expires_at']}). It is shown once:\n{secret}\n"
            f"Call {structured['proxy_url']}/<path> with the header X-Virtual-Key: <key> "
            f"(or Authorization: Bearer <key>).\n" + json.dumps(structured))
    return _result(text, structured)
