"""Connecting an account at an upstream: the step from /connect/<flow_id> to the upstream's
authorization endpoint, and the callback at /connect/callback.

The flow is an ordinary pending flow of kind ``oauth`` on its binding (who may open it: the
binding's person, or the holder of the vk/session temp token, exactly as for header flows).
Opening it creates a PKCE verifier and a ``state`` (``<flow id>.<random>``), kept encrypted in
``flows.oauth``; a new visit replaces them. The callback finds the flow by the state's first
part, compares the random part in constant time, checks ``iss`` (RFC 9207) when the upstream's
metadata says it sends one or when it is present, exchanges the code outside any transaction and
stores the tokens encrypted: on the binding's credential, or for a server's shared account
(``flows.oauth["shared"]``) on ``upstream_oauth``. A server whose tools were never discovered is
discovered with the new token (the creating admin's first connection)."""
from __future__ import annotations

import hmac
import logging
import secrets

from flask import current_app
from sqlalchemy import select

from ..audit import record
from ..credentials import flows, store
from ..credentials.bindings import Binding
from ..extensions import db
from ..models import Flow, McpServer, UpstreamOAuth
from ..models.base import utcnow
from ..ops.errors import BadRequest, Forbidden, OpError
from ..upstream.client import UpstreamError
from ..upstream.discovery import refresh as discover_tools
from . import protocol, registration
from .discovery import DiscoveryError

log = logging.getLogger(__name__)
MAX_PARAM = 2048


class Failed(OpError):
    """The upstream could not be reached or refused the connection; nothing was stored."""
    status, code = 502, "upstream_oauth_failed"


def begin(flow: Flow) -> str:
    """The upstream's authorization URL for this (open, authorized) flow; a fresh verifier and
    state are stored with the flow first."""
    flow_id, server_id = flow.id, flow.mcp_server_id
    try:
        reg = registration.ensure(server_id)
    except DiscoveryError as e:
        db.session.rollback()
        raise Failed(f"cannot connect to the upstream's authorization server: {e}") from None
    flow = db.session.scalar(select(Flow).where(Flow.id == flow_id).with_for_update())
    if flow is None:
        raise flows.Gone("this link is no longer valid")
    flows.check_open(flow)
    nonce, verifier = secrets.token_urlsafe(24), protocol.new_verifier()
    scope = (flow.oauth or {}).get("scope") or reg.scope  # a step-up flow asks its own (wider) scope
    flow.oauth = {**(flow.oauth or {}), "nonce": nonce, "verifier": verifier, "issuer": reg.issuer,
                  "client_id": reg.client_id, "requested": scope}
    db.session.commit()
    return protocol.authorization_url(reg, f"{flow_id}.{nonce}", verifier, scope)


def _param(args, name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_PARAM or not value.isprintable():
        raise BadRequest(f"invalid {name}", {name: "invalid"})
    return value


def flow_of_state(args) -> Flow:
    """The flow a callback's ``state`` names (NotFound/BadRequest otherwise); the random part is
    checked by ``finish``."""
    state = _param(args, "state")
    if not state or "." not in state:
        raise BadRequest("the callback has no valid state", {"state": "missing or malformed"})
    return flows.get_flow(state.split(".", 1)[0])


def finish(flow: Flow, args, user) -> dict:
    """Check the callback against the flow, exchange the code and store the tokens: {"server",
    "shared", "orphaned"}. Raises Forbidden (state or person), Gone, BadRequest (the upstream
    answered an error, e.g. access_denied), Failed (the token exchange)."""
    state, code, iss, error = (_param(args, n) for n in ("state", "code", "iss", "error"))
    oauth = flow.oauth or {}
    nonce = state.split(".", 1)[1] if state and "." in state else ""
    if flow.kind != "oauth":
        raise Forbidden("this callback does not belong to a connection in progress")
    flows.check_open(flow)  # used or expired: 410, as its link
    if not oauth.get("nonce") or not hmac.compare_digest(nonce, oauth["nonce"]):
        raise Forbidden("this callback does not belong to a connection in progress")
    if flow.auth_mode == "user" and (user is None or user.id != flow.user_id):
        raise Forbidden("this connection was started by another user")
    if oauth.get("shared") and not (user is not None and user.is_admin):  # an admin demoted meanwhile
        raise Forbidden("connecting a server's shared account needs an admin")
    if error:
        raise BadRequest(f"the upstream did not grant access ({error[:60]})", {"error": error[:60]})
    if not code:
        raise BadRequest("the callback has no code", {"code": "missing"})
    server = db.session.get(McpServer, flow.mcp_server_id)
    reg = registration.ensure(server.id)
    if reg.issuer != oauth.get("issuer") or reg.client_id != oauth.get("client_id"):
        raise Failed("the upstream's authorization server changed during the connection; start again")
    if iss is not None and reg.issuer is not None and iss != reg.issuer:
        raise Forbidden("the authorization response came from another issuer")
    if iss is None and reg.metadata.get("authorization_response_iss_parameter_supported") is True:
        raise Forbidden("the authorization response lacks the issuer the upstream promised to send")
    flow_id, binding, verifier, shared = flow.id, Binding.of(flow), oauth["verifier"], bool(oauth.get("shared"))
    requested = oauth.get("requested")
    db.session.rollback()  # the token call runs outside any transaction
    try:
        token = protocol.exchange(reg, code, verifier)
    except (protocol.Refused, protocol.Unreachable) as e:
        if isinstance(e, protocol.Refused) and e.error == "invalid_client":
            registration.drop(binding.server_id)  # it forgot our client: the next attempt registers again
        raise Failed(f"the upstream did not issue a token: {e}") from None
    values, expires_at, scopes = protocol.stored(token)
    if scopes is None and requested:
        scopes = requested.split()  # RFC 6749 §5.1: no scope in the answer means the one requested
    if shared:
        _store_shared(flow_id, binding, values, expires_at, scopes)
        orphaned = False
    else:
        cred = flows.store(flow_id, binding, values, "oauth", expires_at, scopes)
        orphaned = cred.status == "orphaned"
    server = db.session.get(McpServer, binding.server_id)
    if server.tools_refreshed_at is None and server.enabled:
        _discover(server, values["access_token"])
    return {"server": server.name, "shared": shared, "orphaned": orphaned}


def _store_shared(flow_id: str, binding: Binding, values: dict, expires_at, scopes) -> None:
    flow = db.session.scalar(select(Flow).where(Flow.id == flow_id).with_for_update())
    if flow is None:
        raise flows.Gone("this link is no longer valid")
    flows.check_open(flow)
    row = db.session.get(UpstreamOAuth, binding.server_id)
    if row is None:
        row = UpstreamOAuth(mcp_server_id=binding.server_id)
        db.session.add(row)
    now = utcnow()
    row.token, row.expires_at, row.scopes, row.status = values, expires_at, scopes, "active"
    row.connected_by_id, row.connected_at, row.refresh_lease_until = binding.identity, now, None
    flow.status, flow.token_hash, flow.oauth = "used", None, None
    server = db.session.get(McpServer, binding.server_id)
    record("mcp_server.oauth_connect", server, f"shared account connected, scopes={' '.join(scopes or [])}")
    db.session.commit()
    store.invalidate()


def _discover(server: McpServer, access_token: str) -> None:
    try:
        discover_tools(server, store.bearer(server.shared_headers, access_token))
        record("mcp_server.refresh_tools", server, f"tools={len(server.tools)} (discovered with the connected token)")
        db.session.commit()
    except UpstreamError as e:
        db.session.rollback()
        current_app.logger.warning("tool discovery after an OAuth connection failed: %s", e)


def granted_scopes(binding: Binding) -> list[str]:
    """What a new consent for the binding asks: the server's default scope plus whatever its
    stored token was granted (a step-up widens it; a reconnection after ``invalid_grant`` must
    not narrow it again). A step-up consent asks these plus the challenged scopes."""
    from ..models import Credential

    default: list[str] = []
    row = db.session.get(UpstreamOAuth, binding.server_id)
    server = db.session.get(McpServer, binding.server_id)
    if row is not None and row.registration and server is not None:
        scope = registration.view(server, row.registration).scope
        default = scope.split() if scope else []
    stored = db.session.scalar(select(Credential.scopes).where(*binding.where(Credential))) or []
    return list(dict.fromkeys([*default, *stored]))


def start_shared(server_id: int, admin) -> tuple[str, str | None]:
    """The admin's flow that connects a server's shared account (``oauth`` servers)."""
    return flows.start(Binding("user", admin.id, server_id), "oauth", {"shared": True})


def start_admin(server: McpServer, admin) -> str:
    """The flow an admin opens to connect an OAuth server: its shared account (``oauth``) or the
    admin's own (``per_user_oauth``; a server created without tools has them read with it). The
    one path the page (redirect) and the API (``connect_url``) take; its id."""
    if server.auth_type == "oauth":
        flow_id, _ = start_shared(server.id, admin)
    else:
        flow_id, _ = flows.start(Binding("user", admin.id, server.id), "oauth")
    return flow_id


def connect_link(server: McpServer, admin) -> dict:
    """What the JSON API answers an admin who must consent in a browser: the /connect link
    (valid for this admin's dashboard login only, 15 minutes) and its flow."""
    from ..models.base import iso

    flow_id = start_admin(server, admin)
    flow = db.session.get(Flow, flow_id)
    return {"connect_url": flows.link(flow_id, None), "connect_flow_id": flow_id,
            "connect_expires_at": iso(flow.expires_at) if flow is not None else None}


def revoke_later(server: McpServer):
    """For a server about to be deleted: a function that revokes its shared token at the upstream
    once the deletion has committed (the registration and token are read now, while they exist;
    nothing is fetched). A no-op when there is no shared token or no stored registration."""
    row = db.session.get(UpstreamOAuth, server.id) if server.auth_type == "oauth" else None
    state, values = (row.registration, dict(row.token or {})) if row is not None else (None, {})
    if not state or not values:
        return lambda: None
    reg, server_id = registration.view(server, state), server.id
    return lambda: revoke_upstream(server_id, values, reg)


def disconnect_shared(server: McpServer) -> bool:
    """Disconnect an ``oauth`` server's shared account: the token is deleted here (committed,
    audited) and then revoked at the upstream when it has a revocation endpoint (a failure is
    logged, never undoes). The registration stays (the client is still valid there). Clearing the
    refresh lease voids a refresh in flight: its holder writes only while the lease is its own.
    False when no account was connected."""
    row = db.session.scalar(select(UpstreamOAuth).where(UpstreamOAuth.mcp_server_id == server.id).with_for_update())
    if row is None or not row.token:
        db.session.rollback()
        return False
    values, state = dict(row.token), row.registration
    reg = registration.view(server, state) if state else None
    row.token, row.expires_at, row.scopes, row.refresh_lease_until, row.status = None, None, None, None, None
    row.connected_by_id, row.connected_at, row.updated_at = None, None, utcnow()
    record("mcp_server.oauth_disconnect", server, "shared account disconnected")
    server_id = server.id
    db.session.commit()
    store.invalidate()
    revoke_upstream(server_id, values, reg)
    return True


def revoke_upstream(server_id: int, values: dict, reg=None) -> None:
    """After a local revocation has committed: revoke at the upstream too, when it has a
    revocation endpoint. A failure is logged and changes nothing here."""
    try:
        reg = reg or registration.ensure(server_id)
        for hint in ("refresh_token", "access_token"):
            if values.get(hint):
                protocol.revoke(reg, values[hint], hint)
    except Exception as e:  # noqa: BLE001 - never undoes the local revocation
        db.session.rollback()
        log.warning("upstream token revocation failed for server %s: %s", server_id, type(e).__name__)


def tools_headers(server: McpServer, actor) -> tuple[tuple[str, str], ...]:
    """The headers to discover an OAuth server's tools with: the shared token (``oauth``), or
    the refreshing admin's own (``per_user_oauth``), refreshed first when due. Conflict when
    there is none to use."""
    from ..credentials import store as stored
    from ..models import Credential
    from ..ops.errors import Conflict
    from . import refresh

    server_id, shared_headers = server.id, dict(server.shared_headers or {})
    if server.auth_type == "oauth":
        slot = refresh.Slot.shared(server_id)
        missing = "connect the server's shared account first (Connect on its page)"
    else:
        cred_id = None if actor is None else db.session.scalar(select(Credential.id).where(
            Credential.auth_mode == "user", Credential.user_id == actor.id, Credential.mcp_server_id == server_id,
            Credential.auth_kind == "oauth"))
        if cred_id is None:
            raise Conflict("a per_user_oauth server's tools are read with your own connection: connect your "
                           "account to it first (Sessions, or the server's page)")
        slot = refresh.Slot.credential(cred_id)
        missing = "your connection to this server must be renewed: reconnect it first"
    try:
        values = refresh.refresh(slot)
    except refresh.NeedsReauth:
        raise Conflict(missing) from None
    except refresh.RefreshUnavailable as e:
        raise Failed(f"the token could not be refreshed now: {e}") from None
    return stored.bearer(shared_headers, values["access_token"])
