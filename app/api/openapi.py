"""The OpenAPI 3.1 description of the JSON admin API, served at /api/v1/openapi.json.

Built once as a plain dict. Paths are relative to the server URL ``/api/v1`` and every
operationId is the Flask endpoint name, so tests/api/test_openapi.py can check the document
against ``app.url_map`` route by route and validate real answers against these schemas.
"""
from __future__ import annotations

from flask import jsonify

from ..models.base import MAX_ID
from ..models.credentials import AUTH_KINDS, AUTH_MODES, FLOW_KINDS, STATUSES
from ..models.keys import KEY_PREFIX, SCOPES, SOURCES
from ..models.oauth import CLIENT_KINDS, CONSENT_MODES
from ..models.servers import AUTH_TYPES
from ..models.users import ROLES, TOKEN_PREFIX
from ..ops.connections import AUTH_KINDS as SESSION_AUTH_KINDS
from ..ops.connections import KINDS as SESSION_KINDS
from ..ops.connections import ROW_ID_RE
from ..ops.connections import STATUSES as SESSION_STATUSES
from ..ops.fields import HEADER_NAME_RE, MAX_HEADER_NAME, MAX_HEADER_VALUE, MAX_NAME, MAX_QUERY, MAX_URL, NAME_RE
from ..ops.keys import MAX_AGENT_ID, MAX_KEY_NAME, MAX_RATE_LIMIT
from ..ops.servers import MAX_OAUTH_VALUE, MAX_TIMEOUT
from ..ops.services import MAX_DESCRIPTION
from ..ops.users import MAX_EMAIL, MAX_PASSWORD, MIN_PASSWORD
from . import DEFAULT_LIMIT, MAX_LIMIT, bp


# --- small schema builders -------------------------------------------------------------

def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict, required=(), *, closed: bool = True, **extra) -> dict:
    """An object schema; ``closed`` objects refuse properties that are not listed."""
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def nullable(schema: dict) -> dict:
    t = schema["type"]
    return {**schema, "type": [*(t if isinstance(t, list) else [t]), "null"]}


STR = {"type": "string"}
BOOL = {"type": "boolean"}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
TIMESTAMP = {"type": "string", "format": "date-time", "examples": ["2030-01-31T12:00:00Z"]}
NAME = {"type": "string", "pattern": NAME_RE.pattern, "maxLength": MAX_NAME,
        "description": "Lower-case letters, digits and dashes, starting with a letter."}
HTTP_URL = {"type": "string", "format": "uri", "maxLength": MAX_URL,
            "description": "An http:// or https:// URL without user info."}
HEADER_NAME = {"type": "string", "pattern": HEADER_NAME_RE.pattern}


def listing(items_key: str, item: str) -> dict:
    return obj({
        items_key: {"type": "array", "items": ref(item)},
        "count": {"type": "integer", "minimum": 0, "description": "Items in this page."},
        "total_count": {"type": "integer", "minimum": 0, "description": "Items matching, all pages."},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        "offset": {"type": "integer", "minimum": 0},
    }, [items_key, "count", "total_count", "limit", "offset"])


# --- component schemas ------------------------------------------------------------------

USER_FIELDS = {
    "email": {"type": "string", "format": "email", "maxLength": MAX_EMAIL,
              "description": "Unique, compared case-insensitively; stored lower-case."},
    "password": {"type": "string", "minLength": MIN_PASSWORD, "maxLength": MAX_PASSWORD, "writeOnly": True},
    "role": {"type": "string", "enum": list(ROLES), "default": "member"},
    "active": {**BOOL, "default": True},
}

OAUTH_SETTINGS = {
    "client_id": {"type": "string", "maxLength": MAX_OAUTH_VALUE},
    "client_secret": {"type": "string", "maxLength": MAX_OAUTH_VALUE, "writeOnly": True},
    "scopes": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                         {"type": "string", "description": "Space-separated scope names."}]},
    "authorization_server": HTTP_URL,
    **{name: {**HTTP_URL, "description": "Entered for an upstream without OAuth metadata: used instead of "
                                           "discovery (https://, or http:// to a loopback address). "
                                           "authorization_endpoint and token_endpoint go together and need "
                                           "a client_id; revocation_endpoint is optional."}
       for name in ("authorization_endpoint", "token_endpoint", "revocation_endpoint")},
}

SERVER_WRITE = {
    "name": NAME,
    "url": HTTP_URL,
    "auth_type": {"type": "string", "enum": list(AUTH_TYPES), "default": "none"},
    "per_user_header_keys": {
        "type": ["array", "null"], "items": {"type": "string", "maxLength": MAX_HEADER_NAME},
        "description": "Header names each member supplies (auth_type per_user_headers only, then "
                       "at least one). Stored canonical: trimmed, lower-case, sorted; duplicates "
                       "after canonicalisation are refused. A change of case, spacing or order "
                       "alone is not a change."},
    "sample_headers": {
        "type": ["object", "null"], "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE},
        "writeOnly": True,
        "description": "per_user_headers only: one working value for every per-user key (names "
                       "case-insensitive). Portcullis verifies the server with exactly these values "
                       "(initialize + tools/list), stores the discovered tools and discards the "
                       "values (never stored or logged). Needed when creating an enabled server, "
                       "and on update when the key set, the URL or the auth type changes or the "
                       "server is re-enabled. A real change of the key set turns every active "
                       "member credential of the server to needs_update."},
    "oauth": nullable(obj(OAUTH_SETTINGS, description=(
        "OAuth client settings, only for auth_type oauth and per_user_oauth. On update the "
        "stored client_secret is kept unless a new one is given."))),
    "allow_on_all_virtual_keys": {**BOOL, "default": False},
    "enabled": {**BOOL, "default": True},
    "connect_timeout": {"type": "number", "minimum": 0.1, "maximum": MAX_TIMEOUT, "default": 5,
                        "description": "Seconds allowed to connect to the upstream."},
    "read_timeout": {"type": "number", "minimum": 0.1, "maximum": MAX_TIMEOUT, "default": 30,
                     "description": "Seconds to wait for (each part of) an upstream answer."},
}

VK_WRITE = {
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_NAME},
    "owner_id": nullable({**ID, "description": "The user the key acts for (members see their own keys)."}),
    "agent_id": nullable({"type": "string", "maxLength": MAX_AGENT_ID}),
    "rate_limit_per_minute": {"type": "integer", "minimum": 1, "maximum": MAX_RATE_LIMIT, "default": 60},
    "expires_at": nullable({**TIMESTAMP, "description": "Must be in the future; without an offset UTC is meant."}),
    "active": BOOL,
    "mcp_servers": {"type": "array", "items": ref("ServerGrant"),
                    "description": "The key's MCP server grants; on update the list replaces the old one."},
    "services": {"type": "array", "items": ref("ServiceGrantInput"),
                 "description": "The key's service grants; on update the list replaces the old one."},
}

VK_READ = {
    "id": ID,
    "name": STR,
    "key_prefix": {"type": "string", "description": "The visible start of the secret, e.g. vk_AbCdEfGh."},
    "owner_id": nullable(ID),
    "source": {"type": "string", "enum": list(SOURCES)},
    "agent_id": nullable(STR),
    "mcp_servers": {"type": "array", "items": ref("ServerGrant")},
    "services": {"type": "array", "items": ref("ServiceGrant")},
    "rate_limit_per_minute": {"type": "integer", "minimum": 1},
    "expires_at": nullable(TIMESTAMP),
    "active": BOOL,
    "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
    "created_at": TIMESTAMP,
    "updated_at": TIMESTAMP,
    "last_used_at": nullable(TIMESTAMP),
}

SERVICE_WRITE = {
    "name": NAME,
    "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
    "base_url": HTTP_URL,
    "credential_header": {**HEADER_NAME, "default": "X-API-Key", "description": (
        "The header the secret goes in: Authorization sends 'Bearer <secret>', any other "
        "name carries the secret literally.")},
    "secret": {"type": "string", "minLength": 1, "maxLength": MAX_HEADER_VALUE, "writeOnly": True,
               "description": "The root credential. Write-only: never returned."},
}

SERVER_READ = {
    "id": ID, "name": NAME, "url": {"type": "string"},
    "auth_type": {"type": "string", "enum": list(AUTH_TYPES)},
    "headers": {"type": "array", "items": STR,
                "description": "Names of the shared headers; their values are write-only."},
    "per_user_header_keys": {"type": "array", "items": STR},
    "oauth": nullable(obj({"client_id": STR, "scopes": {"type": "array", "items": STR},
                           "authorization_server": STR, "authorization_endpoint": STR,
                           "token_endpoint": STR, "revocation_endpoint": STR, "client_secret_set": BOOL})),
    "allow_on_all_virtual_keys": BOOL, "enabled": BOOL,
    "tools": {"type": "array", "items": {"type": "object"},
              "description": "The tools discovered at the upstream."},
    "tools_refreshed_at": nullable(TIMESTAMP),
    "tools_discovered": {"type": "boolean", "description": (
        "Whether the tools were ever read at the upstream (false for an OAuth server until an admin connected it)")},
    "connect_timeout": {"type": "number"}, "read_timeout": {"type": "number"},
    "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
}
CONNECT_LINK = {
    "connect_url": {"type": "string", "format": "uri", "description": (
        "<PORTCULLIS_BASE_URL>/connect/<flow_id>: the admin opens it in a browser signed in to the dashboard as "
        "themselves, continues to the upstream and consents there; valid 15 minutes, for this admin only.")},
    "connect_flow_id": STR,
    "connect_expires_at": TIMESTAMP,
}


SCHEMAS = {
    "Error": obj({"error": obj({
        "code": {"type": "string", "examples": ["validation_failed", "not_found", "conflict"]},
        "message": STR,
        "fields": {"type": "object", "additionalProperties": STR,
                   "description": "Field name to what is wrong with it."},
    }, ["code", "message"])}, ["error"]),

    "TokenRequest": obj({"email": {"type": "string", "maxLength": MAX_EMAIL},
                         "password": {"type": "string", "maxLength": MAX_PASSWORD, "writeOnly": True}},
                        ["email", "password"]),
    "Token": obj({"token": {"type": "string", "pattern": "^" + TOKEN_PREFIX,
                            "description": "Send as 'Authorization: Bearer <token>'. Shown once."},
                  "expires_at": TIMESTAMP}, ["token", "expires_at"]),
    "ApiToken": obj({
        "id": ID, "user_id": ID,
        "prefix": {"type": "string", "pattern": "^" + TOKEN_PREFIX, "description": "The visible start of the token."},
        "created_at": TIMESTAMP, "expires_at": TIMESTAMP, "last_used_at": nullable(TIMESTAMP),
        "revoked_at": nullable({**TIMESTAMP, "description": "Set when the token was revoked, by DELETE or "
                                                            "because its user's logins ended."}),
        "active": {"type": "boolean", "description": "Not revoked, not expired, its user active."},
    }, ["id", "user_id", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at", "active"],
        description="A personal API token, never the token itself (only its hash is stored)."),
    "ApiTokenList": listing("tokens", "ApiToken"),

    "User": obj({"id": ID, "email": USER_FIELDS["email"], "role": {"type": "string", "enum": list(ROLES)},
                 "active": BOOL, "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
                 "last_login_at": nullable(TIMESTAMP)},
                ["id", "email", "role", "active", "created_at", "updated_at", "last_login_at"]),
    "UserCreate": obj(USER_FIELDS, ["email", "password"]),
    "UserUpdate": obj(USER_FIELDS, description=(
        "Changed fields only. The last active admin cannot be demoted or deactivated.")),
    "UserList": listing("users", "User"),

    "McpServer": obj(SERVER_READ, list(SERVER_READ)),
    "McpServerCreated": obj({**SERVER_READ, **CONNECT_LINK}, list(SERVER_READ), description=(
        "The server; for an enabled per_user_oauth or oauth server also where the creating admin "
        "consents at the upstream (its tools are discovered with the token that stores: until then "
        "tools_discovered is false).")),
    "McpServerCreate": obj({
        **SERVER_WRITE,
        "headers": {"type": "object", "propertyNames": HEADER_NAME,
                    "additionalProperties": {"type": "string", "minLength": 1, "maxLength": MAX_HEADER_VALUE},
                    "writeOnly": True,
                    "description": "Shared headers sent on every upstream call (auth_type headers). "
                                   "A header may not also be a per-user key."},
    }, ["name", "url"]),
    "McpServerUpdate": obj({
        **SERVER_WRITE,
        "headers": {"type": ["object", "null"], "propertyNames": HEADER_NAME,
                    "additionalProperties": {"type": ["string", "null"], "maxLength": MAX_HEADER_VALUE},
                    "writeOnly": True,
                    "description": "Merged into the stored headers: a string sets that header, "
                                   "null removes it, headers not named are kept."},
    }),
    "McpServerList": listing("mcp_servers", "McpServer"),
    "OAuthConnectLink": obj(CONNECT_LINK, list(CONNECT_LINK)),

    "ServerGrant": obj({"server_id": ID,
                        "tools": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1},
                                  "description": "Tool allowlist; null means every tool."}},
                       ["server_id"]),
    "ServiceGrantInput": obj({"service_id": ID,
                              "scope": {"type": "string", "enum": list(SCOPES), "default": "read"}},
                             ["service_id"]),
    "ServiceGrant": obj({"service_id": ID, "scope": {"type": "string", "enum": list(SCOPES)}},
                        ["service_id", "scope"]),
    "VirtualKey": obj(VK_READ, list(VK_READ)),
    "VirtualKeyCreated": obj({**VK_READ, "key": {
        "type": "string", "pattern": "^" + KEY_PREFIX,
        "description": "The secret. Returned by the create call only, never again."}},
        [*VK_READ, "key"]),
    "VirtualKeyCreate": obj(VK_WRITE, ["name"]),
    "VirtualKeyUpdate": obj(VK_WRITE),
    "VirtualKeyList": listing("virtual_keys", "VirtualKey"),

    "Service": obj({"id": ID, "name": NAME, "description": STR, "base_url": STR,
                    "credential_header": STR,
                    "secret_set": {"type": "boolean", "description": "Always true; the secret is never shown."},
                    "created_at": TIMESTAMP, "updated_at": TIMESTAMP},
                   ["id", "name", "description", "base_url", "credential_header", "secret_set",
                    "created_at", "updated_at"]),
    "ServiceCreate": obj(SERVICE_WRITE, ["name", "base_url", "secret"]),
    "ServiceUpdate": obj(SERVICE_WRITE),
    "ServiceList": listing("services", "Service"),

    "AuditEvent": obj({
        "id": ID, "created_at": TIMESTAMP,
        "actor": obj({"type": {"type": "string", "enum": ["user", "virtual_key", "system"]},
                      "id": nullable({"type": "integer"}), "name": STR}, ["type", "id", "name"]),
        "action": {"type": "string", "examples": ["mcp_server.create", "token.denied"]},
        "target": obj({"type": nullable(STR), "id": nullable({"type": "integer"}), "name": STR},
                      ["type", "id", "name"]),
        "detail": {"type": "string", "description": "A short note; never a secret."},
        "ip": nullable(STR),
        "request_id": nullable(STR),
    }, ["id", "created_at", "actor", "action", "target", "detail", "ip", "request_id"]),
    "AuditEventList": listing("audit_events", "AuditEvent"),

    "HeaderFlow": obj({
        "id": STR, "kind": {"type": "string", "enum": list(FLOW_KINDS)},
        "auth_mode": {"type": "string", "enum": list(AUTH_MODES)},
        "server": obj({"id": ID, "name": STR}, ["id", "name"]),
        "user": nullable(obj({"id": ID, "email": STR}, ["id", "email"],
                             description="user flows: the person whose credential the values become.")),
        "virtual_key": nullable(obj(
            {"id": ID, "name": STR,
             "owner": nullable(obj({"id": ID, "email": STR}, ["id", "email"], description="null: no owner."))},
            ["id", "name", "owner"],
            description="vk flows: the key whose credential the values become. Both user and virtual_key "
                        "are null for a session flow (an anonymous development session).")),
        "reason": {"type": "string", "description": "Why the values are asked for."},
        "required_header_keys": {"type": "array", "items": STR},
        "stored_header_keys": {"type": "array", "items": STR,
                               "description": "Required keys already stored (names only); a "
                                              "resubmission may leave them out and they are kept."},
        "missing_header_keys": {"type": "array", "items": STR},
        "expires_at": TIMESTAMP,
    }, ["id", "kind", "auth_mode", "server", "user", "virtual_key", "reason", "required_header_keys",
        "stored_header_keys", "missing_header_keys", "expires_at"]),
    "HeaderFlowSubmit": obj({"headers": {
        "type": "object", "additionalProperties": {"type": ["string", "null"], "maxLength": MAX_HEADER_VALUE},
        "writeOnly": True,
        "description": "Header name (case-insensitive) to value (kept exactly as given, never "
                       "trimmed). A blank or null value keeps the stored one."}}, ["headers"]),
    "Credential": obj({
        "id": ID, "auth_mode": {"type": "string", "enum": list(AUTH_MODES)},
        "user_id": nullable({"type": "integer"}), "virtual_key_id": nullable({"type": "integer"}),
        "mcp_server_id": ID, "auth_kind": {"type": "string", "enum": list(AUTH_KINDS)},
        "status": {"type": "string", "enum": list(STATUSES)},
        "header_keys": {"type": "array", "items": STR, "description": "Names only; values never leave."},
        "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
    }, ["id", "auth_mode", "user_id", "virtual_key_id", "mcp_server_id", "auth_kind", "status", "header_keys",
        "created_at", "updated_at"]),

    "Session": obj({
        "id": {"type": "string", "pattern": ROW_ID_RE.pattern,
               "description": "cred_<credential id> or flow_<flow id>: unique across both kinds."},
        "kind": {"type": "string", "enum": list(SESSION_KINDS),
                 "description": "credential: stored; flow: a pending step that creates one."},
        "auth_kind": {"type": "string", "enum": list(SESSION_AUTH_KINDS)},
        "auth_mode": {"type": "string", "enum": list(AUTH_MODES)},
        "user": nullable(obj({"id": ID, "email": STR}, ["id", "email"],
                             description="auth_mode user: the person the credential belongs to.")),
        "virtual_key": nullable(obj({"id": ID, "name": STR}, ["id", "name"],
                                    description="auth_mode vk: the key (without owner) it belongs to.")),
        "session_id": nullable({"type": "string", "description": "auth_mode session: the MCP session id."}),
        "server": obj({"id": ID, "name": STR}, ["id", "name"]),
        "status": {"type": "string", "enum": list(SESSION_STATUSES),
                   "description": "Credentials: active, needs_update, orphaned, needs_reauth (OAuth). "
                                  "Flows: pending."},
        "header_keys": {"type": "array", "items": STR,
                        "description": "Names only, never a value: a credential's stored header names, a "
                                       "header flow's requested names."},
        "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
        "expires_at": nullable({**TIMESTAMP, "description": "When a flow's link expires; for an OAuth "
                                                            "credential, when its access token expires (it is "
                                                            "refreshed before); null for header credentials."}),
        "scopes": nullable({"type": "array", "items": STR,
                            "description": "OAuth credentials: the scopes the upstream granted (null otherwise)."}),
        "can_reauth": {"type": "boolean", "description": (
            "Whether the caller may start a new flow for this row: credential rows only, not orphaned; "
            "user rows only by that user.")},
    }, ["id", "kind", "auth_kind", "auth_mode", "user", "virtual_key", "session_id", "server", "status",
        "header_keys", "scopes", "created_at", "updated_at", "expires_at", "can_reauth"]),
    "SessionList": listing("sessions", "Session"),

    "OAuthClient": obj({
        "id": ID,
        "client_id": {"type": "string", "description": "Random for registered clients; the HTTPS URL of the "
                                                      "client ID metadata document otherwise."},
        "kind": {"type": "string", "enum": list(CLIENT_KINDS),
                 "description": "dcr: registered dynamically (RFC 7591); cimd: a client ID metadata document."},
        "client_name": STR, "client_uri": nullable(STR),
        "redirect_uris": {"type": "array", "items": STR},
        "grant_types": {"type": "array", "items": {"type": "string", "enum": ["authorization_code", "refresh_token"]}},
        "token_endpoint_auth_method": {"type": "string",
                                       "enum": ["none", "client_secret_basic", "client_secret_post"]},
        "scope": STR, "created_at": TIMESTAMP, "fetched_at": nullable(TIMESTAMP), "last_used_at": nullable(TIMESTAMP),
    }, ["id", "client_id", "kind", "client_name", "client_uri", "redirect_uris", "grant_types",
        "token_endpoint_auth_method", "scope", "created_at", "fetched_at", "last_used_at"]),
    "OAuthClientList": listing("oauth_clients", "OAuthClient"),
    "OAuthConsent": obj({
        "id": ID,
        "client": obj({"id": ID, "client_id": STR, "client_name": STR}, ["id", "client_id", "client_name"]),
        "user": obj({"id": ID, "email": STR}, ["id", "email"], description="The person who consented."),
        "mode": {"type": "string", "enum": list(CONSENT_MODES),
                 "description": "As whom the client acts: the person (user), one of their keys (vk), or an "
                                "anonymous development session (session)."},
        "virtual_key": nullable(obj({"id": ID, "name": STR}, ["id", "name"], description="vk mode: the key.")),
        "scopes": {"type": "array", "items": STR},
        "resource": {"type": "string", "description": "The MCP endpoint the tokens are for (their aud)."},
        "created_at": TIMESTAMP, "last_used_at": nullable(TIMESTAMP),
        "signed_in": {"type": "boolean", "description": "false when its refresh tokens ended (logout, password "
                                                         "change): the app must sign in again."},
    }, ["id", "client", "user", "mode", "virtual_key", "scopes", "resource", "created_at", "last_used_at",
        "signed_in"]),
    "OAuthConsentList": listing("oauth_consents", "OAuthConsent"),
    "SessionReauth": obj({
        "url": {"type": "string", "description": "The submission page to open: "
                                                 "{PORTCULLIS_BASE_URL}/connect/<flow_id>, plus #t=<token> for "
                                                 "vk and session rows (shown once)."},
        "flow_id": STR, "expires_at": TIMESTAMP}, ["url", "flow_id", "expires_at"]),
}


# --- responses and parameters -----------------------------------------------------------

def error_response(description: str, **extra) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}, **extra}


RESPONSES = {
    "BadRequest": error_response("Malformed JSON, a body that is not a JSON object, or bad query parameters."),
    "Unauthorized": error_response(
        "No valid API token (missing, unknown, expired or revoked, or the user is inactive).",
        headers={"WWW-Authenticate": {"schema": STR, "description": 'Bearer realm="portcullis"'}}),
    "Forbidden": error_response("The token's user is not an admin (code forbidden), or must first change "
                                "a one-time password (code password_change_required)."),
    "PasswordChangeRequired": error_response(
        "password_change_required: the token's user still has a one-time password and must choose their own "
        "on the dashboard (/account/password) first."),
    "NotFound": error_response("No such object (or, for a member, not one of their own keys)."),
    "Conflict": error_response("The change clashes with existing data (a taken name or e-mail, the last admin)."),
    "ValidationFailed": error_response("A field is missing, unknown or invalid; error.fields says which."),
    "RateLimited": error_response("Too many attempts; retry later.",
                                  headers={"Retry-After": {"schema": {"type": "integer"}}}),
}

PARAMETERS = {
    "limit": {"name": "limit", "in": "query", "description": "Page size.",
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    "offset": {"name": "offset", "in": "query", "description": "Items to skip.",
               "schema": {"type": "integer", "minimum": 0, "default": 0}},
    "q": {"name": "q", "in": "query", "description": "Search text.",
          "schema": {"type": "string", "maxLength": MAX_QUERY}},
}


def path_id(name: str, what: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": f"The {what}'s id.", "schema": ID}


def problems(*names: str) -> dict:
    return {str(code): {"$ref": f"#/components/responses/{name}"} for code, name in (
        (400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"),
        (409, "Conflict"), (422, "ValidationFailed"), (429, "RateLimited")) if name in names}


def ok(status: int, description: str, schema: str | None = None) -> dict:
    if schema is None:
        return {str(status): {"description": description}}
    return {str(status): {"description": description,
                          "content": {"application/json": {"schema": ref(schema)}}}}


def json_body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}


def op(endpoint: str, tag: str, summary: str, responses: dict, *, body: str | None = None,
       params: list | None = None, security: list | None = None, description: str | None = None) -> dict:
    operation = {"operationId": endpoint, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = json_body(body)
    if security != []:  # a token of a user who must change their password is refused everywhere
        refused = responses.get("403")
        if refused is None:
            refused = {"$ref": "#/components/responses/PasswordChangeRequired"}
        elif "$ref" not in refused:
            refused = {**refused, "description": refused["description"] + " Or password_change_required: "
                       "the token's user must first change a one-time password on the dashboard."}
        responses = {**responses, "403": refused}
    operation["responses"] = responses
    if security is not None:
        operation["security"] = security
    return operation


def resource(tag: str, noun: str, plural: str, prefix: str, *, id_name: str, schema: str,
             list_params: tuple = ("q",), conflicts: bool = True, admin: bool = True,
             notes: dict | None = None) -> dict:
    """The five operations of one collection: list, create, get, update, delete."""
    notes = notes or {}
    admin_errors = ("Forbidden",) if admin else ()
    write_errors = ("Conflict",) if conflicts else ()
    params = [{"$ref": f"#/components/parameters/{p}"} for p in ("limit", "offset")]
    params += [PARAMETERS[p] if isinstance(p, str) and p in PARAMETERS else p for p in list_params]
    one = [path_id(id_name, noun)]
    return {
        f"/{prefix}": {
            "get": op(f"list_{plural}", tag, f"List {plural.replace('_', ' ')}",
                      {**ok(200, "One page.", f"{schema}List"), **problems("BadRequest", "Unauthorized", *admin_errors)},
                      params=params, description=notes.get("list")),
            "post": op(f"create_{noun}", tag, f"Create a {noun.replace('_', ' ')}",
                       {**ok(201, "Created.", notes.get("created_schema", schema)),
                        **problems("BadRequest", "Unauthorized", "Forbidden", "ValidationFailed", *write_errors)},
                       body=f"{schema}Create", description=notes.get("create")),
        },
        f"/{prefix}/{{{id_name}}}": {
            "parameters": one,
            "get": op(f"get_{noun}", tag, f"Get a {noun.replace('_', ' ')}",
                      {**ok(200, "The object.", schema), **problems("Unauthorized", *admin_errors, "NotFound")},
                      description=notes.get("get")),
            "patch": op(f"update_{noun}", tag, f"Change a {noun.replace('_', ' ')}",
                        {**ok(200, "The object after the change.", schema),
                         **problems("BadRequest", "Unauthorized", "Forbidden", "NotFound", "ValidationFailed",
                                    *write_errors)},
                        body=f"{schema}Update", description=notes.get("update")),
            "delete": op(f"delete_{noun}", tag, f"Delete a {noun.replace('_', ' ')}",
                         {**ok(204, "Deleted."), **problems("Unauthorized", *admin_errors, "NotFound",
                                                            *(("Conflict",) if noun == "user" else ()))},
                         description=notes.get("delete")),
        },
    }


PATHS = {
    "/openapi.json": {"get": op(
        "openapi", "meta", "This document", {"200": {
            "description": "The OpenAPI 3.1 description of this API.",
            "content": {"application/json": {"schema": {"type": "object"}}}}}, security=[])},

    "/tokens": {
        "post": op(
            "create_token", "tokens", "Get an API token",
            {**ok(201, "A new token; store it, it is not shown again.", "Token"),
             **problems("BadRequest", "ValidationFailed", "RateLimited"),
             "401": error_response("Wrong e-mail or password, or the user is inactive."),
             "403": error_response("password_change_required: the user still has a one-time password and must "
                                   "choose their own on the dashboard (/account/password) first; or "
                                   "password_login_disabled: PORTCULLIS_PASSWORD_LOGIN=false, people sign in "
                                   "through single sign-on.")},
            body="TokenRequest", security=[],
            description="Exchanges the e-mail and password of any active user for a personal bearer token, "
                        "valid for PORTCULLIS_API_TOKEN_HOURS. Every token of a user ends with their dashboard "
                        "logins: on a password change or reset, deactivation, a role change or deletion. Failed "
                        "attempts are audited (token.denied) and rate-limited per client address."),
        "get": op(
            "list_tokens", "tokens", "List API tokens, newest first",
            {**ok(200, "One page.", "ApiTokenList"), **problems("BadRequest", "Unauthorized"),
             "403": error_response("A member asked for another user's tokens."),
             "404": error_response("No user with this user_id (admins).")},
            params=[{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"},
                    {"name": "user_id", "in": "query", "schema": ID,
                     "description": "Whose tokens (default: your own). Admins may name any user."}],
            description="Ended tokens are listed too (revoked_at, active). Never the token itself."),
    },
    "/tokens/{token_id}": {
        "parameters": [path_id("token_id", "token")],
        "delete": op("delete_token", "tokens", "Revoke an API token",
                     {**ok(204, "Revoked (also when it already was)."), **problems("Unauthorized", "NotFound")},
                     description="Your own tokens; admins any user's. Another user's token is not found. "
                                 "Audited as token.revoke."),
    },

    **resource("users", "user", "users", "users", id_name="user_id", schema="User", notes={
        "list": "q matches part of the e-mail address.",
        "delete": "You cannot delete yourself, nor the last active admin.",
    }),
    **resource("mcp-servers", "server", "servers", "mcp-servers", id_name="server_id", schema="McpServer", notes={
        "created_schema": "McpServerCreated",
        "list": "q matches part of the name.",
        "create": "Header values and the OAuth client secret are write-only: answers carry header "
                  "names and client_secret_set only. An enabled none or headers server is contacted "
                  "(initialize + tools/list) and refused with 422 (error.fields.url) when unreachable. "
                  "An enabled per_user_oauth or oauth server cannot be consented to through the API: the "
                  "answer carries connect_url (and its flow id and expiry), which the creating admin opens "
                  "in a browser signed in to the dashboard; tools_discovered stays false until then.",
        "update": "A change that affects how an enabled none or headers server is reached (url, "
                  "auth_type, headers, enabled, timeouts) rediscovers its tools; unreachable is a 422.",
    }),
    "/mcp-servers/{server_id}/oauth-connection": {
        "parameters": [path_id("server_id", "server")],
        "post": op("connect_server_oauth", "mcp-servers", "Get a link to connect an OAuth server",
                   {**ok(200, "Where the calling admin consents at the upstream: the server's shared account "
                                  "(oauth) or the admin's own (per_user_oauth).", "OAuthConnectLink"),
                    **problems("Unauthorized", "Forbidden", "NotFound"),
                    "409": error_response("The server does not use OAuth.")},
                   description="Starts (or renews) the admin's connection flow, as Connect/Reconnect on the "
                               "server's page; the link is opened in a browser signed in to the dashboard as "
                               "that admin."),
        "delete": op("disconnect_server_oauth", "mcp-servers", "Disconnect an oauth server's shared account",
                     {**ok(204, "Disconnected (or was not connected). Calls then answer a tool error saying an "
                                "admin must connect it."),
                      **problems("Unauthorized", "Forbidden", "NotFound"),
                      "409": error_response("The server is not an oauth server (per_user_oauth connections "
                                            "are revoked from the sessions API).")},
                     description="Deletes the shared token here (committed, audited as "
                                 "mcp_server.oauth_disconnect), then revokes it at the upstream's revocation "
                                 "endpoint when it has one; a failure there is logged and never undoes the "
                                 "disconnection. The client registration is kept."),
    },
    "/mcp-servers/{server_id}/refresh-tools": {
        "parameters": [path_id("server_id", "server")],
        "post": op("refresh_server_tools", "mcp-servers", "Rediscover a server's tools",
                   {**ok(200, "The server with its fresh tool list.", "McpServer"),
                    **problems("Unauthorized", "Forbidden", "NotFound"),
                    "409": error_response("Per-user and OAuth servers are discovered with a member's credentials, "
                                          "not on demand."),
                    "422": error_response("The upstream is unreachable or not an MCP server.")}),
    },
    **resource("virtual-keys", "key", "keys", "virtual-keys", id_name="key_id", schema="VirtualKey",
               conflicts=False, admin=False,
               list_params=("q", {"name": "source", "in": "query", "description": "Only keys of this source.",
                                  "schema": {"type": "string", "enum": list(SOURCES)}}),
               notes={
                   "created_schema": "VirtualKeyCreated",
                   "list": "Admins see every key, members only their own. q matches the name or key prefix.",
                   "create": "Keys created here have source api. The answer carries the secret (key) "
                             "once; it is stored only as a hash.",
                   "get": "Members can read only their own keys (others are not found).",
                   "update": "Grant lists, when given, replace the key's grants.",
                   "delete": "Members can delete only their own keys (others are not found).",
               }),
    **resource("services", "service", "services", "services", id_name="service_id", schema="Service", notes={
        "list": "q matches part of the name.",
        "create": "The secret is write-only and never returned.",
    }),

    "/header-flows/{flow_id}": {
        "parameters": [{"name": "flow_id", "in": "path", "required": True, "schema": STR,
                        "description": "The flow id from the submit URL."},
                       {"name": "X-Portcullis-Flow-Token", "in": "header", "required": False, "schema": STR,
                        "description": "vk/session flows: the temp token from the submit URL's fragment "
                                       "(#t=...), instead of an API token."}],
        "get": op("get_header_flow", "credentials", "What a header submission flow asks for",
                  {**ok(200, "The form: whose credential it becomes (the user, or the key and its "
                                 "owner), the server, required and stored header names (never a value).",
                          "HeaderFlow"),
                   **problems("Unauthorized", "NotFound"),
                   "403": error_response("Another user's flow, or a missing or wrong flow token."),
                   "410": error_response("The flow expired or was used.")},
                  security=[{"bearerAuth": []}, {}],
                  description="user flows need the API token of that user; vk/session flows the flow token."),
        "put": op("submit_header_flow", "credentials", "Submit header values",
                  {**ok(200, "Verified at the upstream and stored (status active); the flow is used.",
                        "Credential"),
                   **problems("Unauthorized", "NotFound"),
                   "400": error_response("Malformed body, a header the server does not ask for, or "
                                         "missing values (error.fields.headers names them)."),
                   "403": error_response("Another user's flow, or a missing or wrong flow token."),
                   "410": error_response("The flow expired or was used."),
                   "422": error_response("The upstream refused the values (reason in error.fields.headers); "
                                         "nothing was stored and the flow stays pending.")},
                  body="HeaderFlowSubmit", security=[{"bearerAuth": []}, {}],
                  description="The values are verified at the upstream (initialize + tools/list) with "
                              "exactly what will be stored; stored keys left out are kept."),
    },
    "/credentials/{credential_id}": {
        "parameters": [path_id("credential_id", "credential"),
                       {"name": "X-Portcullis-Flow-Token", "in": "header", "required": False, "schema": STR,
                        "description": "vk/session bindings: the token of the binding's pending flow."}],
        "delete": op("delete_credential", "credentials", "Revoke a stored credential",
                     {**ok(204, "Deleted, with the binding's pending flows."),
                      **problems("Unauthorized", "Forbidden", "NotFound")},
                     security=[{"bearerAuth": []}, {}],
                     description="By the owner (user bindings), an admin, or a vk/session binding's "
                                 "pending flow token. Pending flows of the binding are deleted first."),
    },

    "/sessions": {"get": op(
        "list_sessions", "sessions", "List stored credentials and pending flows, newest first",
        {**ok(200, "One page.", "SessionList"), **problems("BadRequest", "Unauthorized")},
        params=[{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"},
                {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": MAX_QUERY},
                 "description": "Part of a server name, user e-mail or key name (case-insensitive), or "
                                "exactly a key id, an MCP session id or a row id."},
                *[{"name": name, "in": "query", "style": "form", "explode": False,
                   "schema": {"type": "array", "items": {"type": "string", "enum": list(values)}},
                   "description": f"Only rows with one of these {label} (comma-separated)."}
                  for name, values, label in (("status", SESSION_STATUSES, "statuses"),
                                              ("auth_mode", ("user", "vk", "session"), "binding modes"),
                                              ("auth_kind", SESSION_AUTH_KINDS, "credential kinds"),
                                              ("kind", SESSION_KINDS, "row kinds"))],
                {"name": "server_id", "in": "query", "style": "form", "explode": False,
                 "schema": {"type": "array", "items": ID},
                 "description": "Only rows of these MCP servers (comma-separated ids)."}],
        description="Every per-user credential and every pending, unexpired flow the caller may see, as "
                    "one list. Admins see all; members see rows of their own user and of keys they own "
                    "(never session rows). A pending flow is hidden while its binding has an active "
                    "credential. Any bad parameter is a 400 naming it (error.fields).")},
    "/sessions/{row_id}": {
        "parameters": [{"name": "row_id", "in": "path", "required": True, "schema": STR,
                        "description": "A row id from the list: cred_<n> or flow_<id>."}],
        "delete": op("delete_session", "sessions", "Revoke a credential or a pending flow",
                     {**ok(204, "Deleted: the binding's pending flows first, then the row."),
                      **problems("Unauthorized", "NotFound")},
                     description="Not found for rows the caller cannot see (and for used, expired or "
                                 "superseded flows). Audited as session.revoke."),
    },
    "/sessions/{row_id}/reauth": {
        "parameters": [{"name": "row_id", "in": "path", "required": True, "schema": STR,
                        "description": "A credential row id from the list: cred_<n>."}],
        "post": op("reauth_session", "sessions", "Start (or refresh) a flow to replace a credential",
                   {**ok(200, "The flow's submission page.", "SessionReauth"),
                    **problems("Unauthorized", "NotFound"),
                    "403": error_response("can_reauth is false: a flow row, an orphaned credential, "
                                          "another person's user credential.")},
                   description="For the row's binding. Audited as session.reauth."),
    },

    "/oauth-clients": {"get": op(
        "list_oauth_clients", "oauth", "List OAuth clients of the authorization server",
        {**ok(200, "One page.", "OAuthClientList"), **problems("BadRequest", "Unauthorized", "Forbidden")},
        params=[{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"},
                {**PARAMETERS["q"], "description": "Part of the client name or client id."}])},
    "/oauth-clients/{client_pk}": {
        "parameters": [path_id("client_pk", "OAuth client")],
        "get": op("get_oauth_client", "oauth", "Get an OAuth client",
                  {**ok(200, "The client.", "OAuthClient"), **problems("Unauthorized", "Forbidden", "NotFound")}),
        "delete": op("delete_oauth_client", "oauth", "Delete an OAuth client",
                     {**ok(204, "Deleted, with every consent and token it holds."),
                      **problems("Unauthorized", "Forbidden", "NotFound")}),
    },
    "/oauth-consents": {"get": op(
        "list_oauth_consents", "oauth", "List connected apps (live consents)",
        {**ok(200, "One page.", "OAuthConsentList"), **problems("BadRequest", "Unauthorized")},
        params=[{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"},
                {**PARAMETERS["q"], "description": "Part of the client name or the person's e-mail."}],
        description="Any user: their own consents; admins: everyone's.")},
    "/oauth-consents/{consent_id}": {
        "parameters": [path_id("consent_id", "consent")],
        "delete": op("revoke_oauth_consent", "oauth", "Revoke a connected app",
                     {**ok(204, "Revoked: its refresh tokens at once, its access tokens on the next call."),
                      **problems("Unauthorized", "NotFound")},
                     description="Your own consents; admins any. Others' are not found."),
    },

    "/audit-events": {"get": op(
        "list_audit_events", "audit", "List audit events, newest first",
        {**ok(200, "One page.", "AuditEventList"), **problems("BadRequest", "Unauthorized", "Forbidden")},
        params=[{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"},
                {"name": "action", "in": "query", "description": "Only events with this action.",
                 "schema": {"type": "string", "examples": ["virtual_key.create"]}}])},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "Portcullis admin API",
        "version": "1",
        "summary": "Manage users, MCP servers, virtual keys, services and read the audit log.",
        "description": "Every route except POST /tokens and this document needs "
                       "'Authorization: Bearer <token>' and an admin, unless it says otherwise. "
                       "Errors are JSON: {\"error\": {\"code\", \"message\", \"fields\"?}}. Secrets "
                       "(header values, service secrets, OAuth client secrets) are write-only; a "
                       "virtual key's secret is shown once, in the create answer.",
    },
    "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearerAuth": []}],
    "tags": [{"name": t} for t in ("tokens", "users", "mcp-servers", "virtual-keys", "services", "credentials", "sessions",
                                         "oauth", "audit", "meta")],
    "paths": PATHS,
    "components": {
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "A personal API token from POST /tokens (pct_...)."}},
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "parameters": {"limit": PARAMETERS["limit"], "offset": PARAMETERS["offset"]},
    },
}


@bp.get("/openapi.json")
def openapi():
    return jsonify(DOCUMENT)
