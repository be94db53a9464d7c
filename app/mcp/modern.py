"""MCP 2026-07-28 towards agents: ``server/discover`` and stateless requests.

A 2026-07-28 request stands alone: no initialize, no Mcp-Session-Id. Its ``params._meta``
carries the envelope (``io.modelcontextprotocol/protocolVersion``, ``.../clientCapabilities``,
optionally ``.../clientInfo`` and ``.../logLevel``), and the headers ``MCP-Protocol-Version``,
``Mcp-Method`` (and ``Mcp-Name`` for tools/call, prompts/get, resources/read) repeat it. The
checks run in the order of the SDK's inbound ladder: envelope present (-32602), headers equal
to the body (-32020), version served (-32022, naming every version /mcp speaks, so an
auto-negotiating client falls back to initialize). Errors carry the HTTP status the
2026-07-28 transport gives them (400, 404 for an unknown method).

Every result gets what that revision requires: ``resultType`` (``complete`` unless the upstream
said ``input_required``), ``ttlMs``/``cacheScope`` on cacheable results (0 and ``private``:
what an agent sees depends on its grants), and Portcullis as ``io.modelcontextprotocol/serverInfo``
in ``_meta``.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

VERSIONS = MODERN_PROTOCOL_VERSIONS  # ("2026-07-28",)
# What a 2026-07-28 agent may call (the revision dropped initialize, ping, logging/setLevel and
# resources/subscribe; subscriptions/listen replaces the GET stream: app/mcp/listen.py).
METHODS = frozenset({"server/discover", "tools/list", "tools/call", "resources/list", "resources/templates/list",
                     "resources/read", "prompts/list", "prompts/get", "completion/complete", "subscriptions/listen"})
CACHEABLE = frozenset({"server/discover", "tools/list", "resources/list", "resources/templates/list",
                       "resources/read", "prompts/list"})
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
HTTP_STATUS = {types.PARSE_ERROR: 400, types.INVALID_REQUEST: 400, types.INVALID_PARAMS: 400,
               types.HEADER_MISMATCH: 400, types.MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
               types.UNSUPPORTED_PROTOCOL_VERSION: 400, types.METHOD_NOT_FOUND: 404}
ENVELOPE_KEYS = (types.PROTOCOL_VERSION_META_KEY, types.CLIENT_INFO_META_KEY, types.CLIENT_CAPABILITIES_META_KEY)


@dataclass(frozen=True)
class Envelope:
    """What a 2026-07-28 request declared about its client."""

    version: str
    capabilities: dict
    client_info: dict | None
    log_level: str | None  # notifications/message at or above it reach the agent; None: none do


class Rejected(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def error(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def wanted(headers, message: dict) -> bool:
    """Is this a 2026-07-28 request (rather than one of an initialized session)?"""
    if headers.get("MCP-Protocol-Version") in VERSIONS or message.get("method") == "server/discover":
        return True
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return (isinstance(meta, dict) and types.PROTOCOL_VERSION_META_KEY in meta
            and headers.get("Mcp-Session-Id") is None and message.get("method") != "initialize")


def envelope(headers, message: dict, log_levels: tuple, supported: tuple) -> Envelope:
    """The request's envelope, checked like the SDK's inbound ladder; raises Rejected."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        raise Rejected(types.INVALID_PARAMS, "params._meta must be an object carrying the required "
                       f"{types.PROTOCOL_VERSION_META_KEY!r} and {types.CLIENT_CAPABILITIES_META_KEY!r} envelope keys")
    missing = [k for k in (types.PROTOCOL_VERSION_META_KEY, types.CLIENT_CAPABILITIES_META_KEY) if k not in meta]
    if missing:
        raise Rejected(types.INVALID_PARAMS, "params._meta is missing the required envelope key(s): "
                       + ", ".join(missing))
    version = meta[types.PROTOCOL_VERSION_META_KEY]
    method = message.get("method")
    if headers.get("MCP-Protocol-Version") != version:
        raise Rejected(types.HEADER_MISMATCH,
                       "mcp-protocol-version header does not match the request envelope's protocol version")
    if headers.get("Mcp-Method") != method:
        raise Rejected(types.HEADER_MISMATCH, "mcp-method header does not match the request body's method")
    name_key = NAME_PARAMS.get(method)
    if name_key is not None and params.get(name_key) is not None \
            and _decode(headers.get("Mcp-Name")) != params.get(name_key):
        raise Rejected(types.HEADER_MISMATCH, f"mcp-name header does not match the request body's {name_key!r} parameter")
    if not isinstance(version, str):
        raise Rejected(types.INVALID_PARAMS, "the protocol-version envelope value must be a string")
    if version not in VERSIONS:
        raise Rejected(types.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                       {"supported": list(supported), "requested": version[:40]})
    caps = meta[types.CLIENT_CAPABILITIES_META_KEY]
    if not isinstance(caps, dict):
        raise Rejected(types.INVALID_PARAMS, "the client-capabilities envelope value must be an object")
    info = meta.get(types.CLIENT_INFO_META_KEY)
    level = meta.get(types.LOG_LEVEL_META_KEY)
    return Envelope(version, caps, info if isinstance(info, dict) else None,
                    level if level in log_levels else None)


def _decode(value: str | None) -> str | None:
    """An Mcp-Name header's value (the spec's ``=?base64?...?=`` form decoded)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def strip_envelope(params: dict) -> dict:
    """The params without the agent's envelope keys (the upstream gets Portcullis's)."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not any(k in meta for k in ENVELOPE_KEYS):
        return params
    rest = {k: v for k, v in meta.items() if k not in ENVELOPE_KEYS}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if rest:
        out["_meta"] = rest
    return out


def shape(method: str, result: dict, server_info: dict) -> dict:
    """A result as 2026-07-28 requires it (see the module's docstring)."""
    result = dict(result)
    result.setdefault("resultType", "complete")
    if method in CACHEABLE and result.get("resultType") == "complete":
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), types.SERVER_INFO_META_KEY: server_info}
    return result


def status(error) -> int:
    return HTTP_STATUS.get(error.get("code"), 200) if isinstance(error, dict) else 200
