"""The test OpenID provider (npm `oidc-provider` on Node 22) and the token-verifying upstream
behave like the real things other tests rely on: discovery, open registration, a code + PKCE
flow through the headless browser and through Chromium, ID-token claims, JWT access tokens
for a resource that the upstream accepts (and refuses for another audience or once expired),
refresh-token rotation with reuse detection, revocation."""
from __future__ import annotations

import time

import httpx
import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from tests.support.oidc_provider import HttpxBrowser, pkce, sdk_handlers, start_protected_upstream, static_client
from tests.support.mcp import stop, wait_for

REDIRECT = "http://127.0.0.1:47124/callback"  # nothing listens: the browsers stop there
WEB = static_client("web", secret="web-secret-1", redirect_uris=[REDIRECT])
CLI = static_client("cli", redirect_uris=[REDIRECT])


@pytest.fixture(scope="module")
def provider(oidc_provider_factory):
    return oidc_provider_factory(clients=[WEB, CLI])


@pytest.fixture(scope="module")
def upstream(provider):
    """A token-verifying upstream trusting this module's provider."""
    proc, url = start_protected_upstream(provider.issuer)
    yield url
    stop(proc)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _code(provider, client_id, login="alice@example.com", **kw):
    verifier, challenge = pkce()
    url = provider.authorization_url(client_id, REDIRECT, challenge=challenge, state="s-1", **kw)
    result = HttpxBrowser(login).authorize(url, stop_at=REDIRECT)
    assert result.code and result.state == "s-1" and result.iss == provider.issuer, result.params
    return result.code, verifier


def _claims(provider, token: str) -> dict:
    return jwt.decode(token, KeySet.import_key_set(provider.jwks()), algorithms=["RS256"]).claims


def test_discovery(provider):
    d = provider.discovery()
    assert d["issuer"] == provider.issuer
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert d["registration_endpoint"] and d["revocation_endpoint"] and d["jwks_uri"]
    assert d["authorization_response_iss_parameter_supported"] is True
    assert {"openid", "email", "groups", "mcp:tools"} <= set(d["scopes_supported"])


def test_open_registration_then_code_flow(provider):
    app = provider.register(client_name="Dyn", redirect_uris=[REDIRECT], token_endpoint_auth_method="none",
                            grant_types=["authorization_code", "refresh_token"], response_types=["code"])
    code, verifier = _code(provider, app["client_id"], login="bob@example.com")
    r = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                        "redirect_uri": REDIRECT, "client_id": app["client_id"]})
    assert r.status_code == 200, r.text
    assert _claims(provider, r.json()["id_token"])["sub"] == "bob@example.com"


def test_code_pkce_flow_id_token_claims(provider):
    code, verifier = _code(provider, "web", scope="openid email profile groups", nonce="n-42")
    r = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                        "redirect_uri": REDIRECT}, auth=("web", "web-secret-1"))
    assert r.status_code == 200, r.text
    claims = _claims(provider, r.json()["id_token"])
    assert claims["iss"] == provider.issuer and claims["aud"] == "web" and claims["nonce"] == "n-42"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["groups"] == ["admins"] and claims["name"] == "Alice"
    # the code is single use; a wrong verifier is refused
    again = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                            "redirect_uri": REDIRECT}, auth=("web", "web-secret-1"))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_pkce_required_and_wrong_verifier_refused(provider):
    url = provider.authorization_url("cli", REDIRECT, state="s-2")  # no code_challenge
    result = HttpxBrowser().authorize(url, stop_at=REDIRECT)
    assert result.error == "invalid_request" and not result.code
    code, _ = _code(provider, "cli")
    r = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": pkce()[0],
                        "redirect_uri": REDIRECT, "client_id": "cli"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_declined_consent_and_changed_claims(provider):
    browser = HttpxBrowser("bob@example.com", consent=False)
    result = browser.authorize(provider.authorization_url("cli", REDIRECT, challenge=pkce()[1]), stop_at=REDIRECT)
    assert result.error == "access_denied"
    with provider.accounts_changed({"bob@example.com": {"groups": [], "email_verified": False}}):
        code, verifier = _code(provider, "web", login="bob@example.com", scope="openid email groups")
        r = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                            "redirect_uri": REDIRECT}, auth=("web", "web-secret-1"))
        claims = _claims(provider, r.json()["id_token"])
        assert claims["groups"] == [] and claims["email_verified"] is False
    assert provider.set_accounts({})["bob@example.com"]["groups"] == ["staff"]  # restored


def _resource_tokens(provider, resource, client_id="cli", login="alice@example.com"):
    code, verifier = _code(provider, client_id, login=login, scope="openid mcp:tools", resource=resource)
    r = provider.token({"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                        "redirect_uri": REDIRECT, "client_id": client_id, "resource": resource})
    assert r.status_code == 200, r.text
    return r.json()


def test_refresh_rotation_and_reuse_refused(provider, upstream):
    protected_upstream = upstream
    tokens = _resource_tokens(provider, protected_upstream)
    first = tokens["refresh_token"]
    r = provider.token({"grant_type": "refresh_token", "refresh_token": first, "client_id": "cli"})
    assert r.status_code == 200, r.text
    second = r.json()["refresh_token"]
    assert second != first  # rotated
    assert _claims(provider, r.json()["access_token"])["aud"] == protected_upstream
    reuse = provider.token({"grant_type": "refresh_token", "refresh_token": first, "client_id": "cli"})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # reusing a rotated token revokes the whole grant: the newest one is refused too
    after = provider.token({"grant_type": "refresh_token", "refresh_token": second, "client_id": "cli"})
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


def test_revocation(provider, upstream):
    tokens = _resource_tokens(provider, upstream)
    r = httpx.post(provider.discovery()["revocation_endpoint"], timeout=10,
                   data={"token": tokens["refresh_token"], "client_id": "cli"})
    assert r.status_code == 200
    again = provider.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "cli"})
    assert again.status_code == 400


def _mcp_call(url, token):
    return httpx.post(url, timeout=10, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                              "params": {"name": "whoami", "arguments": {}}},
                      headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                               "MCP-Protocol-Version": "2025-11-25"})


def test_upstream_accepts_its_jwt_and_refuses_others(provider, upstream):
    protected_upstream = upstream
    bare = httpx.post(protected_upstream, json={}, timeout=10)
    assert bare.status_code == 401
    meta_url = protected_upstream.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{meta_url}"' in bare.headers["WWW-Authenticate"]
    meta = httpx.get(meta_url, timeout=10).json()
    assert meta["resource"] == protected_upstream and meta["authorization_servers"] == [provider.issuer]

    tokens = _resource_tokens(provider, protected_upstream, login="bob@example.com")
    access = _claims(provider, tokens["access_token"])
    assert access["aud"] == protected_upstream and access["scope"] == "mcp:tools"
    r = _mcp_call(protected_upstream, tokens["access_token"])
    assert r.status_code == 200, r.text
    who = r.json()["result"]["structuredContent"]
    assert who["sub"] == "bob@example.com" and who["email"] == "bob@example.com" and who["scopes"] == ["mcp:tools"]

    other = _resource_tokens(provider, "http://127.0.0.1:1/mcp")  # a token for another resource
    assert _mcp_call(protected_upstream, other["access_token"]).status_code == 401
    assert _mcp_call(protected_upstream, tokens["id_token"]).status_code == 401  # not an access token


def test_expired_jwt_refused(oidc_provider_factory):
    short = oidc_provider_factory(clients=[CLI], resource_token_ttl=2)
    proc, url = start_protected_upstream(short.issuer)
    try:
        tokens = _resource_tokens(short, url)
        exp = _claims(short, tokens["access_token"])["exp"]
        assert _mcp_call(url, tokens["access_token"]).status_code == 200
        wait_for(lambda: time.time() > exp + 1, "the access token's expiry", timeout=10)
        assert _mcp_call(url, tokens["access_token"]).status_code == 401
        r = short.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "cli",
                         "resource": url})
        assert _mcp_call(url, r.json()["access_token"]).status_code == 200
    finally:
        stop(proc)


@pytest.mark.anyio
async def test_sdk_oauth_client_reaches_the_upstream(oidc_provider, protected_upstream):
    """mcp's OAuthClientProvider knows only the upstream's URL: 401 -> protected-resource
    metadata -> the provider's discovery -> registration -> code + PKCE with resource -> JWT."""
    class Memory:
        tokens = client = None

        async def get_tokens(self):
            return self.tokens

        async def set_tokens(self, tokens):
            self.tokens = tokens

        async def get_client_info(self):
            return self.client

        async def set_client_info(self, info):
            self.client = info

    redirect, callback = sdk_handlers(HttpxBrowser("alice@example.com"), REDIRECT)
    auth = OAuthClientProvider(server_url=protected_upstream, storage=Memory(), redirect_handler=redirect,
                               callback_handler=callback,
                               client_metadata=OAuthClientMetadata(client_name="SDK", redirect_uris=[REDIRECT],
                                                                   response_types=["code"],
                                                                   grant_types=["authorization_code", "refresh_token"]))
    async with httpx2.AsyncClient(auth=auth, timeout=10) as http:
        async with Client(streamable_http_client(protected_upstream, http_client=http)) as c:
            r = await c.call_tool("whoami", {})
    assert r.structured_content["sub"] == "alice@example.com"
    assert r.structured_content["scopes"] == ["mcp:tools"]


def test_chromium_signs_in(provider, browser_context):
    """The login and consent pages work in a real browser (what SSO browser tests drive)."""
    verifier, challenge = pkce()
    page = browser_context().new_page()
    page.route(REDIRECT + "**", lambda route: route.fulfill(status=200, body="done", content_type="text/plain"))
    page.goto(provider.authorization_url("cli", REDIRECT, challenge=challenge, state="c-1"))
    page.fill("#login", "alice@example.com")
    page.click("#sign-in")
    page.click("#confirm")
    page.wait_for_url(REDIRECT + "**", timeout=15000)
    assert "code=" in page.url and "state=c-1" in page.url
