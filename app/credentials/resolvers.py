"""One resolver per MCP server auth_type: what goes upstream for a caller, how a missing
credential is obtained, how one is revoked. OAuth types arrive as two more resolvers.

- ``endpoint(server, caller)``: the upstream endpoint (URL, headers, timeouts) to call for
  this caller, or ``AuthRequired`` (a flow was started or refreshed; the answer says which URL
  the person opens) or ``CredentialUnavailable`` (nothing the person can do).
- ``start_flow(binding)``: start or refresh the binding's flow (re-authentication from the
  sessions page or API): (flow id, temp token or None).
- ``revoke(credential)``: delete it with its binding's pending flows (OAuth: also at the upstream).
- ``after_refused(server, caller, endpoint, status, challenge)`` (OAuth): the upstream answered
  401 or 403 to ``endpoint``. 401: the endpoint to retry once with (another instance's newer
  token, or a refreshed one). 403 ``insufficient_scope`` (step-up): AuthRequired for a new consent
  asking the stored scopes plus the challenged ones (per person; the stored token stays usable),
  or CredentialUnavailable telling that an admin must reconnect (shared). None: answer the refusal.

Shared types (``none``, ``headers``) are served from the snapshot without touching the database
or decrypting anything; per-user types read the binding's credential through app/credentials/store.py.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod

from ..models.base import utcnow
from . import flows, store
from .answers import AuthRequired, CredentialUnavailable, SecretNotSet, SignInAgain
from .bindings import Binding, binding_of

SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")


class Resolver(ABC):
    kind: str | None = None  # the kind of credential (and flow) stored per binding; None: shared
    discoverable = False  # tools are discovered with the server's own configuration

    @abstractmethod
    def endpoint(self, server, caller):
        """The upstream endpoint for this caller, or AuthRequired / CredentialUnavailable."""

    def start_flow(self, binding: Binding) -> tuple[str, str | None]:
        raise CredentialUnavailable("this server takes no per-person credentials")

    def revoke(self, credential, **audit) -> None:
        flows.revoke(credential, **audit)

    def after_refused(self, server, caller, endpoint, status: int, challenge: str | None):
        return None


class Shared(Resolver):
    """``none`` and ``headers``: the server's own configuration, the same for every caller."""

    discoverable = True

    def endpoint(self, server, caller):
        return server.shared_endpoint


class PerUserHeaders(Resolver):
    """``per_user_headers``: each binding's own header values, typed into a browser form."""

    kind = "headers"

    def endpoint(self, server, caller):
        binding = binding_of(caller, server.id)
        if binding is None:
            raise CredentialUnavailable(
                f"{server.name}: per-user credentials are bound to an MCP session; initialize one first")
        view = store.stored(server, binding)
        if view.endpoint is not None:
            return view.endpoint
        required = list(server.per_user_header_keys)
        stored = sorted(k for k in view.values if k in required)
        if view.status is None:
            reason = "none stored yet"
        elif view.status == "needs_update":
            reason = "the server's required headers changed"
        elif view.status != "active":
            reason = f"the stored credential is {view.status}"
        else:
            reason = "a required header is missing: " + ", ".join(k for k in required if k not in stored)
        if not caller.signed_in():
            raise SignInAgain()
        flow_id, token = self.start_flow(binding)
        raise AuthRequired("headers", server.name, flow_id, flows.link(flow_id, token), required, stored, reason)

    def start_flow(self, binding: Binding) -> tuple[str, str | None]:
        return flows.start(binding, self.kind)


def _used_token(endpoint) -> str | None:
    for name, value in endpoint.headers:
        if name.lower() == "authorization" and value.startswith("Bearer "):
            return value[7:]
    return None


class _OAuth(Resolver):
    """What both OAuth types share: a token in a row (a slot), refreshed before it expires and
    after the upstream refuses it (app/upstream_oauth/refresh.py)."""

    @abstractmethod
    def _view(self, server, caller):
        """The stored token for this caller (per person, or the server's shared one)."""

    @abstractmethod
    def _slot(self, view):
        """The row a refresh takes its lease on (refresh.Slot)."""

    @abstractmethod
    def _reauth(self, server, caller, reason: str):
        """What the caller is answered when the token must be obtained again."""

    def endpoint(self, server, caller):
        from ..upstream_oauth import refresh

        view = self._view(server, caller)
        if view.endpoint is None:
            return self._reauth(server, caller, self._reason(view))
        if not refresh.due(view.expires_at, view.values):
            return view.endpoint
        return self._refreshed(server, caller, view, None)

    def after_refused(self, server, caller, endpoint, status: int, challenge: str | None):
        if status == 403:
            wanted = _step_up_scopes(challenge)
            if wanted is None:
                return None
            return self._step_up(server, caller, wanted)
        view = self._view(server, caller)
        if view.credential_id is None:
            return None
        return self._refreshed(server, caller, view, _used_token(endpoint) or "")

    @abstractmethod
    def _step_up(self, server, caller, wanted: list[str]):
        """The upstream asks for the scopes ``wanted`` (RFC 6750 insufficient_scope)."""

    def _refreshed(self, server, caller, view, used):
        from ..upstream_oauth import refresh

        try:
            values = refresh.refresh(self._slot(view), used)
        except refresh.NeedsReauth:
            return self._reauth(server, caller, "the upstream no longer accepts the stored authorization")
        except refresh.RefreshUnavailable as e:
            if used is None and view.expires_at is not None and view.expires_at > utcnow():
                return view.endpoint  # still valid for a moment; the next call tries again
            raise CredentialUnavailable(f"{server.name}: the access token could not be refreshed now ({e}); "
                                        "try again shortly") from None
        return server.endpoint(store.bearer(dict(server.headers), values["access_token"]))

    @staticmethod
    def _reason(view) -> str:
        if view.status is None:
            return "not connected yet"
        if view.status == "needs_reauth":
            return "the upstream no longer accepts the stored authorization"
        return f"the stored authorization is {view.status}"


def _step_up_scopes(challenge: str | None) -> list[str] | None:
    """The scopes a 403's ``WWW-Authenticate: Bearer error="insufficient_scope", scope="..."``
    asks for; None when it is another refusal or names no valid scope (RFC 6749 §3.3 tokens)."""
    from ..upstream_oauth.discovery import challenge_param

    if not challenge or challenge_param(challenge, "error") != "insufficient_scope":
        return None
    scope = challenge_param(challenge, "scope") or ""
    wanted = scope.split()
    if not wanted or len(scope) > 1024 or not all(SCOPE_TOKEN.fullmatch(s) for s in wanted):
        return None
    return wanted


class PerUserOAuth(_OAuth):
    """``per_user_oauth``: each binding's own tokens, from a consent at the upstream."""

    kind = "oauth"

    def _view(self, server, caller):
        binding = binding_of(caller, server.id)
        if binding is None:
            raise CredentialUnavailable(
                f"{server.name}: per-user credentials are bound to an MCP session; initialize one first")
        return store.stored(server, binding)

    def _slot(self, view):
        from ..upstream_oauth.refresh import Slot
        return Slot.credential(view.credential_id)

    def _reauth(self, server, caller, reason: str):
        if not caller.signed_in():
            raise SignInAgain()
        flow_id, token = self.start_flow(binding_of(caller, server.id))
        raise AuthRequired("oauth", server.name, flow_id, flows.link(flow_id, token), [], [], reason)

    def start_flow(self, binding: Binding) -> tuple[str, str | None]:
        """A first connection asks the server's scope; a reconnection also what was granted since."""
        from ..upstream_oauth.connect import granted_scopes

        scopes = granted_scopes(binding)
        return flows.start(binding, self.kind, {"scope": " ".join(scopes)} if scopes else None)

    def _step_up(self, server, caller, wanted: list[str]):
        """A new consent for what the person granted so far plus what the upstream asks; the
        stored token is left as it is (it still serves what it could do)."""
        from ..upstream_oauth.connect import granted_scopes

        binding = binding_of(caller, server.id)
        if binding is None:
            return None
        if not caller.signed_in():
            raise SignInAgain()
        scopes = list(dict.fromkeys([*granted_scopes(binding), *wanted]))
        flow_id, token = flows.start(binding, self.kind, {"scope": " ".join(scopes)})
        raise AuthRequired("oauth", server.name, flow_id, flows.link(flow_id, token), [], [],
                           f"the upstream asks for wider access: {' '.join(wanted)}")

    def revoke(self, credential, **audit) -> None:
        from ..upstream_oauth.connect import revoke_upstream

        server_id, values = credential.mcp_server_id, dict(credential.values or {})
        flows.revoke(credential, **audit)  # commits: the local revocation stands whatever follows
        revoke_upstream(server_id, values)


class SharedOAuth(_OAuth):
    """``oauth``: one account an admin connected on the server's page, used for every caller.
    Until it is connected (or after the upstream dropped it) a call is a tool error: agents
    never start a flow for an admin."""

    def _view(self, server, caller):
        return store.shared_oauth(server)

    def _slot(self, view):
        from ..upstream_oauth.refresh import Slot
        return Slot.shared(view.credential_id)

    def _reauth(self, server, caller, reason: str):
        raise CredentialUnavailable(
            f"{server.name}: an administrator must connect this server's account on its page in Portcullis "
            f"({reason})")

    def _step_up(self, server, caller, wanted: list[str]):
        raise CredentialUnavailable(
            f"{server.name}: the upstream asks for wider access than the shared account granted "
            f"({' '.join(wanted)}); an administrator must reconnect it with wider scope (the server's OAuth scopes "
            "on its page in Portcullis, then Reconnect)")


RESOLVERS: dict[str, Resolver] = {
    "none": Shared(),
    "headers": Shared(),
    "oauth": SharedOAuth(),
    "per_user_headers": PerUserHeaders(),
    "per_user_oauth": PerUserOAuth(),
}


def resolver(auth_type: str) -> Resolver:
    return RESOLVERS[auth_type]


def endpoint_for(server, caller):
    """The upstream endpoint for this caller (see Resolver.endpoint)."""
    return RESOLVERS[server.auth_type].endpoint(server, caller)


def discoverable(auth_type: str) -> bool:
    return RESOLVERS[auth_type].discoverable


DISCOVERABLE = tuple(t for t, r in RESOLVERS.items() if r.discoverable)


def flow_resolver(auth_kind: str, server_auth_type: str) -> Resolver | None:
    """The resolver that re-authenticates a credential of ``auth_kind`` on a server that now
    has ``server_auth_type`` (None when the server no longer takes that kind)."""
    r = RESOLVERS.get(server_auth_type)
    return r if r is not None and r.kind == auth_kind else None


def service_credential(service, caller) -> tuple[str, str]:
    """The (header, value) the proxy injects for a service (its root credential, the same for
    every caller granted it); ``SecretNotSet`` when it has none yet, ``CredentialUnavailable``
    when it cannot be decrypted."""
    if not service.secret_set:
        raise SecretNotSet(f"service {service.name} has no secret yet (it was imported without one): "
                           "an admin must set it")
    if service.credential is None:
        raise CredentialUnavailable(f"cannot decrypt services.secret of service {service.name}: "
                                    "the encryption key it was stored with is not configured")
    return service.credential
