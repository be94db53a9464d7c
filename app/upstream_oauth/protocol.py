"""The OAuth protocol towards an upstream, done by Authlib's OAuth client: the authorization
URL (PKCE S256, ``state``, RFC 8707 ``resource``), the code exchange, refresh and revocation.

Errors: ``Refused`` carries the authorization server's OAuth error code (``invalid_grant``
means the grant is gone for good); ``Unreachable`` is a network failure or a 5xx, which is
retried and never marks a credential bad. Neither message holds a token."""
from __future__ import annotations

from datetime import timedelta

import httpx2  # what Authlib's OAuth client is built on
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from ..models.base import utcnow
from . import registration
from .registration import Registration, redirect_uri

VERIFIER_LENGTH = 64
TIMEOUT = httpx2.Timeout(10.0, connect=5.0)


class Refused(Exception):
    def __init__(self, error: str):
        super().__init__(f"the authorization server refused: {error}")
        self.error = error


class Unreachable(Exception):
    pass


def _client(reg: Registration) -> OAuth2Client:
    guard = registration.guard(reg.guarded_by, reg.guarded_private)  # discovered endpoints: checked again when used, pinned
    transport = httpx2.HTTPTransport(trust_env=False)
    return OAuth2Client(transport=guard.transport(transport, httpx2) if guard is not None else transport,
                        client_id=reg.client_id, client_secret=reg.client_secret,
                        token_endpoint_auth_method=reg.auth_method, revocation_endpoint_auth_method=reg.auth_method,
                        redirect_uri=redirect_uri(), scope=reg.scope, code_challenge_method="S256",
                        timeout=TIMEOUT, follow_redirects=False, trust_env=False)


def new_verifier() -> str:
    return generate_token(VERIFIER_LENGTH)


def authorization_url(reg: Registration, state: str, verifier: str, scope: str | None = None) -> str:
    """``scope``: what to ask (a step-up's wider scope); default the registration's."""
    with _client(reg) as client:
        url, _ = client.create_authorization_url(reg.metadata["authorization_endpoint"], state=state,
                                                 code_verifier=verifier, resource=reg.resource,
                                                 scope=scope or reg.scope)
    return url


def _token_call(call) -> dict:
    try:
        token = call()
    except OAuthError as e:
        raise Refused(str(e.error or "error")[:80]) from None
    except httpx2.HTTPError as e:
        raise Unreachable(f"the authorization server is unreachable ({type(e).__name__})") from None
    except ValueError:  # not JSON: a proxy's error page, a 5xx
        raise Unreachable("the authorization server sent an answer that is not JSON") from None
    if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
        raise Refused("no access_token in the answer")
    return dict(token)


def exchange(reg: Registration, code: str, verifier: str) -> dict:
    with _client(reg) as client:
        return _token_call(lambda: client.fetch_token(reg.metadata["token_endpoint"], grant_type="authorization_code",
                                                      code=code, code_verifier=verifier, resource=reg.resource))


def refresh(reg: Registration, refresh_token: str) -> dict:
    """No scope is sent: the grant's own (RFC 6749 §6), which a step-up may have widened beyond
    the registration's default."""
    with _client(reg) as client:
        client.scope = None
        return _token_call(lambda: client.refresh_token(reg.metadata["token_endpoint"], refresh_token=refresh_token,
                                                        resource=reg.resource))


def revoke(reg: Registration, token: str, hint: str) -> None:
    """RFC 7009 at the upstream, when it has a revocation endpoint; raises Unreachable/Refused."""
    endpoint = reg.metadata.get("revocation_endpoint")
    if not endpoint:
        return
    with _client(reg) as client:
        try:
            r = client.revoke_token(endpoint, token=token, token_type_hint=hint)
        except httpx2.HTTPError as e:
            raise Unreachable(f"the revocation endpoint is unreachable ({type(e).__name__})") from None
    if r.status_code != 200:
        raise Refused(f"HTTP {r.status_code}")


def stored(token: dict, previous: dict | None = None) -> tuple[dict, object, list | None]:
    """What is kept of a token response: (values, expires_at or None, scopes or None). A refresh
    answer without a new refresh token keeps the previous one (RFC 6749 §6)."""
    values = {k: token[k] for k in ("access_token", "refresh_token", "token_type") if isinstance(token.get(k), str)}
    if "refresh_token" not in values and previous and previous.get("refresh_token"):
        values["refresh_token"] = previous["refresh_token"]
    expires_in = token.get("expires_in")
    expires_at = utcnow() + timedelta(seconds=int(expires_in)) \
        if isinstance(expires_in, (int, float)) or (isinstance(expires_in, str) and expires_in.isdigit()) else None
    if expires_at is not None:
        values["expires_in"] = int(expires_in)  # the lifetime: how early a refresh is due
    scope = token.get("scope")
    scopes = scope.split() if isinstance(scope, str) else None
    return values, expires_at, scopes
