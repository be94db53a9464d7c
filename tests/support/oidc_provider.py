"""A real OAuth 2.1 / OpenID Connect provider for the tests: the npm package `oidc-provider`
(9.13.3, on Node 22; `make install-test` puts both in ~/.cache/portcullis-oidc) run by
``oidc/provider.mjs`` on a free loopback port, with our own login page (an account name, no
password) and consent button, so a headless httpx "browser" (``HttpxBrowser``) and real Chromium
can both sign in as whoever a test chooses. Plus an upstream MCP server that accepts only the
JWT access tokens this provider issues for it (``oidc/protected_mcp_server.py``).

    provider = oidc_provider_factory(clients=[static_client("portcullis", secret="s", redirect_uris=[...])],
                                     accounts={"alice@example.com": {"groups": ["admins"]}})
    result = HttpxBrowser(login="alice@example.com").authorize(url, stop_at=redirect_uri)  # code, state, iss

Providers are started once per distinct configuration per test session and stopped at its end.
``provider.accounts_changed({...})`` changes claims for the length of a ``with`` block.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest

from tests.support.mcp import free_port, stop, wait_for, wait_ready

HERE = Path(__file__).resolve().parent / "oidc"
OIDC_DIR = Path(os.environ.get("PORTCULLIS_OIDC_DIR", Path.home() / ".cache" / "portcullis-oidc"))
NODE = OIDC_DIR / "node_modules" / ".bin" / "node"
TIMEOUT = httpx.Timeout(10.0)

# Who signs in, unless a test says otherwise (claims the provider puts in ID tokens and userinfo).
ACCOUNTS = {
    "alice@example.com": {"name": "Alice", "groups": ["admins"]},
    "bob@example.com": {"name": "Bob", "groups": ["staff"]},
    "mallory@evil.test": {"name": "Mallory", "groups": ["admins"]},
    "unverified@example.com": {"name": "Unverified", "email_verified": False},
}


def static_client(client_id: str, *, secret: str | None = None, redirect_uris: list[str],
                  grant_types: tuple[str, ...] = ("authorization_code", "refresh_token"), **extra) -> dict:
    """A client registered in the provider's configuration; ``secret=None`` makes a public client."""
    client = {"client_id": client_id, "redirect_uris": list(redirect_uris), "grant_types": list(grant_types),
              "response_types": ["code"], **extra}
    if secret is None:
        client["token_endpoint_auth_method"] = "none"
    else:
        client["client_secret"] = secret
    return client


@dataclass
class OidcProvider:
    issuer: str
    config: dict
    proc: subprocess.Popen = field(repr=False)
    control_token: str = field(repr=False)

    def discovery(self) -> dict:
        return httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=TIMEOUT).raise_for_status().json()

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    def jwks(self) -> dict:
        return httpx.get(f"{self.issuer}/jwks", timeout=TIMEOUT).raise_for_status().json()

    def register(self, **metadata) -> dict:
        """Open dynamic client registration (RFC 7591)."""
        r = httpx.post(f"{self.issuer}/reg", json=metadata, timeout=TIMEOUT)
        assert r.status_code == 201, r.text
        return r.json()

    def authorization_url(self, client_id: str, redirect_uri: str, *, scope: str = "openid email",
                          state: str | None = None, challenge: str | None = None, **extra) -> str:
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
                  "state": state or secrets.token_urlsafe(12), **extra}
        if challenge:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        return f"{self.issuer}/auth?" + urlencode({k: v for k, v in params.items() if v is not None})

    def token(self, data: dict, auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.token_endpoint, data=data, auth=auth, timeout=TIMEOUT)

    def set_accounts(self, accounts: dict) -> dict:
        """Replace the claims of these accounts (``None`` forgets one); returns all accounts."""
        r = httpx.put(f"{self.issuer}/__test/accounts", json=accounts, timeout=TIMEOUT,
                      headers={"X-Test-Control": self.control_token})
        return r.raise_for_status().json()

    @contextmanager
    def accounts_changed(self, accounts: dict):
        """Other claims for these accounts inside the block (say, a group taken away), as before after it."""
        before = httpx.get(f"{self.issuer}/__test/accounts", headers={"X-Test-Control": self.control_token},
                           timeout=TIMEOUT).raise_for_status().json()
        self.set_accounts(accounts)
        try:
            yield self
        finally:
            self.set_accounts({login: before.get(login) for login in accounts})


def start_provider(*, clients: list[dict] = (), accounts: dict | None = None, registration: bool = True,
                   revocation: bool = True, pkce_required: bool = True, rotate_refresh_tokens: bool = True,
                   resource_scope: str | None = "mcp:tools", resource_token_ttl: int = 600,
                   access_token_ttl: int = 600, id_token_ttl: int = 600, refresh_token_ttl: int = 86400,
                   claims_in_id_token: bool = True) -> OidcProvider:
    """Start a provider (stop it with ``stop_provider``). ``resource_scope``: resource indicators
    on (RFC 8707), tokens for a resource are RS256 JWTs with aud = the resource, that scope and
    ``resource_token_ttl`` seconds of life (None: off, opaque tokens only). ``claims_in_id_token``:
    e-mail, groups and name in the ID token (False: only in userinfo, OpenID's strict reading)."""
    if not NODE.exists():
        pytest.fail(f"oidc-provider is not installed in {OIDC_DIR}: run `make install-test`")
    port = free_port()
    control = secrets.token_urlsafe(16)
    config = {"port": port, "clients": list(clients), "accounts": ACCOUNTS if accounts is None else accounts,
              "registration": registration, "revocation": revocation, "pkce_required": pkce_required,
              "rotate_refresh_tokens": rotate_refresh_tokens,
              "resource": {"scope": resource_scope, "access_token_ttl": resource_token_ttl} if resource_scope else None,
              "access_token_ttl": access_token_ttl, "id_token_ttl": id_token_ttl,
              "refresh_token_ttl": refresh_token_ttl, "claims_in_id_token": claims_in_id_token,
              "control_token": control}
    fd, path = tempfile.mkstemp(prefix="oidc-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen([str(NODE), str(HERE / "provider.mjs"), path],
                            env={**os.environ, "OIDC_NODE_MODULES": str(OIDC_DIR / "node_modules")},
                            stdout=subprocess.DEVNULL)
    issuer = f"http://127.0.0.1:{port}"
    try:
        _wait_discovery(proc, issuer)
    finally:
        os.unlink(path)  # read at start; it holds the client secrets
    return OidcProvider(issuer=issuer, config=config, proc=proc, control_token=control)


def _wait_discovery(proc: subprocess.Popen, issuer: str) -> None:
    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"oidc-provider exited with {proc.returncode}")
        try:
            return httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False
    try:
        wait_for(ready, "oidc-provider's discovery document", timeout=30)
    except BaseException:
        stop(proc)
        raise


def stop_provider(provider: OidcProvider) -> None:
    stop(provider.proc)


@pytest.fixture(scope="session")
def oidc_provider_factory():
    """``factory(**start_provider arguments)``: a running provider, one per distinct configuration
    for the whole session (the same arguments give the same provider), all stopped at the end."""
    running: dict[str, OidcProvider] = {}

    def factory(**config) -> OidcProvider:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in running:
            running[key] = start_provider(**config)
        return running[key]

    yield factory
    for provider in running.values():
        stop_provider(provider)


@pytest.fixture(scope="session")
def oidc_provider(oidc_provider_factory) -> OidcProvider:
    """The default provider: open registration, revocation, PKCE required, refresh tokens rotated,
    JWT access tokens for resources (scope mcp:tools), the accounts of ``ACCOUNTS``."""
    return oidc_provider_factory()


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class AuthorizationResult:
    url: str  # the redirect URI the browser stopped at, with its query
    params: dict

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def state(self) -> str | None:
        return self.params.get("state")

    @property
    def iss(self) -> str | None:
        return self.params.get("iss")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


_FORM = re.compile(r'<form[^>]*\baction="([^"]+)"', re.I)


class HttpxBrowser:
    """A cookie-keeping headless "browser": follows an authorization URL through redirects, the
    provider's login form (signing in as ``login``) and its consent button, and stops at the first
    URL starting with ``stop_at`` (nothing needs to listen there). Keeps its cookies between calls,
    like a person's browser (a second authorization sees the provider's session)."""

    def __init__(self, login: str = "alice@example.com", *, consent: bool = True, client: httpx.Client | None = None):
        self.login, self.consent = login, consent
        self.http = client or httpx.Client(timeout=TIMEOUT)
        self.pages: list[str] = []  # every URL visited, for the tests' messages

    def authorize(self, url: str, stop_at: str, max_steps: int = 20) -> AuthorizationResult:
        method, data = "GET", None
        for _ in range(max_steps):
            if url.startswith(stop_at):
                return AuthorizationResult(url, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()})
            self.pages.append(url)
            r = self.http.request(method, url, data=data)
            method, data = "GET", None
            if r.is_redirect:
                url = urljoin(url, r.headers["Location"])
                continue
            actions = [unescape(a) for a in _FORM.findall(r.text)] if r.status_code == 200 else []
            login = next((a for a in actions if a.endswith("/login")), None)
            confirm = next((a for a in actions if a.endswith("/confirm" if self.consent else "/abort")), None)
            if login:
                url, method, data = urljoin(url, login), "POST", {"login": self.login}
            elif confirm:
                url, method = urljoin(url, confirm), "POST"
            else:
                raise AssertionError(f"stuck at {url}: HTTP {r.status_code} {r.text[:500]}")
        raise AssertionError(f"no redirect to {stop_at} after {max_steps} steps: {self.pages}")

    def close(self) -> None:
        self.http.close()


def sdk_handlers(browser: HttpxBrowser, redirect_uri: str):
    """(redirect_handler, callback_handler) for mcp's ``OAuthClientProvider``: the browser runs the
    authorization in a worker thread; the callback hands over its code, state and iss."""
    import anyio
    from mcp.client.auth import AuthorizationCodeResult

    box: dict = {}

    async def redirect_handler(url: str) -> None:
        box["result"] = await anyio.to_thread.run_sync(browser.authorize, url, redirect_uri)

    async def callback_handler() -> AuthorizationCodeResult:
        result = box.pop("result")
        assert result.code, f"no code: {result.params}"
        return AuthorizationCodeResult(code=result.code, state=result.state, iss=result.iss)

    return redirect_handler, callback_handler


def start_protected_upstream(issuer: str, *args: str) -> tuple[subprocess.Popen, str]:
    """The token-verifying upstream MCP server for ``issuer``; returns (process, its /mcp URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "protected_mcp_server.py"), "--port", str(port),
                             "--issuer", issuer, *args])
    url = f"http://127.0.0.1:{port}/mcp"
    wait_ready(proc, url)
    return proc, url


@pytest.fixture(scope="session")
def protected_upstream(oidc_provider):
    """An upstream MCP server (stateless JSON) that accepts only the default provider's JWTs issued
    for its own URL (scope mcp:tools); its URL."""
    proc, url = start_protected_upstream(oidc_provider.issuer)
    yield url
    stop(proc)
