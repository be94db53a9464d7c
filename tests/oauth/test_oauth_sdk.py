"""The official `mcp` SDK's OAuth client (OAuthClientProvider) connects to a Portcullis served by
gunicorn knowing nothing but the URL of /mcp: it discovers the authorization server, registers
(dynamically, or by a client ID metadata document over real TLS), sends "the person" through
login and consent (a cookie-keeping HTTP client playing the browser), lists and calls tools, and
refreshes by itself once the access token has expired."""
from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_ready
from tests.support.tls import DocumentServer, make_ca_and_cert

pytestmark = pytest.mark.anyio
PASSWORD = "correct horse battery"
REDIRECT = "http://127.0.0.1:47123/callback"  # nothing listens: the "browser" stops at the redirect
LIFETIME = 3  # seconds an access token lives here, so that the refresh is seen within the test
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("tls"))
    server = DocumentServer(cert, key)
    server.ca = ca
    yield server
    server.close()


@pytest.fixture(scope="module")
def portcullis(tmp_path_factory, upstreams, docs):
    """gunicorn with two people, each with a key granting the upstream alpha."""
    tmp = tmp_path_factory.mktemp("oauth-sdk")
    port = free_port()
    setup = f"""
from app.models import User
from app.oauth_server import keys
from app.ops.keys import create_key
from app.ops.servers import create_server
server = create_server({{"name": "alpha", "url": "{upstreams['alpha']}"}})
for email in ("ada@example.com", "bob@example.com"):
    user = User(email=email, role="member")
    user.set_password("{PASSWORD}")
    db.session.add(user)
    db.session.flush()
    create_key({{"name": "laptop of " + email, "owner_id": user.id,
                "mcp_servers": [{{"server_id": server.id, "tools": None}}]}}, source="api")
keys.ensure()
db.session.commit()
print("ok")
"""
    env, out = gateway_instance(str(tmp), port, setup, PORTCULLIS_BASE_URL=f"http://127.0.0.1:{port}",
                                PORTCULLIS_ACCESS_TOKEN_SECONDS=str(LIFETIME), PORTCULLIS_CIMD_ALLOW_LOOPBACK="true",
                                SSL_CERT_FILE=str(docs.ca), PORTCULLIS_SWEEP="false")
    assert out == "ok"
    proc = serve("wsgi:app", env, "--access-logfile", "/dev/null")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + "/login")
        yield base
    finally:
        stop(proc)


class Storage:
    def __init__(self):
        self.tokens = self.client_info = None
        self.token_history = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens
        self.token_history.append(tokens)

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, info):
        self.client_info = info


class Person:
    """Plays the browser: follows the authorization URL, logs in, consents, and stops at the
    redirect to the client (whose code, state and iss go to the SDK's callback handler)."""

    def __init__(self, email: str):
        self.email, self.result, self.consent_pages = email, None, []

    async def redirect_handler(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=10) as browser:
            r = await browser.get(url)
            while r.status_code in (302, 303):
                target = urljoin(str(r.url), r.headers["Location"])
                if target.startswith(REDIRECT):
                    q = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                    self.result = AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))
                    return
                r = await browser.get(target)
            page = r.text
            if 'name="password"' in page:  # the login page (authorize sent us here)
                r = await browser.post(str(r.url), data={"email": self.email, "password": PASSWORD,
                                                          "csrf_token": CSRF_RE.search(page).group(1)})
                assert r.status_code in (302, 303), r.text[:300]
                r = await browser.get(urljoin(str(r.url), r.headers["Location"]))
                page = r.text
            assert "Connect" in page and r.status_code == 200, page[:500]
            self.consent_pages.append(page)
            r = await browser.post(str(r.url), data={"decision": "approve", "mode": "user",
                                                      "csrf_token": CSRF_RE.search(page).group(1)})
            assert r.status_code == 302, r.text[:300]
            q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
            assert r.headers["Location"].startswith(REDIRECT)
            self.result = AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    async def callback_handler(self) -> AuthorizationCodeResult:
        return self.result


def provider(base: str, person: Person, storage: Storage, client_metadata_url: str | None = None):
    return OAuthClientProvider(
        server_url=base + "/mcp",
        client_metadata=OAuthClientMetadata(client_name="SDK test client", redirect_uris=[REDIRECT],
                                            response_types=["code"],
                                            grant_types=["authorization_code", "refresh_token"],
                                            token_endpoint_auth_method="none"),
        storage=storage, redirect_handler=person.redirect_handler, callback_handler=person.callback_handler,
        client_metadata_url=client_metadata_url)


async def use(base: str, auth) -> tuple[set[str], str]:
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(base + "/mcp", http_client=http)) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            text = (await c.call_tool("alpha__echo", {"text": "through oauth"})).content[0].text
            return names, text


async def test_dynamic_registration_then_tools_then_refresh(portcullis):
    person, storage = Person("ada@example.com"), Storage()
    auth = provider(portcullis, person, storage)
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(portcullis + "/mcp", http_client=http)) as c:
            assert "alpha__echo" in {t.name for t in (await c.list_tools()).tools}
            r = await c.call_tool("alpha__echo", {"text": "through oauth"})
            assert r.content[0].text == "through oauth"
            assert storage.client_info.client_id and not storage.client_info.client_id.startswith("https://")
            first = storage.tokens
            assert first.refresh_token and first.expires_in == LIFETIME
            # wait on the clock until the access token has expired; the next call refreshes it
            deadline = time.monotonic() + LIFETIME + 1
            while time.monotonic() < deadline:
                await anyio.sleep(0.1)
            r = await c.call_tool("alpha__echo", {"text": "after the refresh"})
            assert r.content[0].text == "after the refresh"
    assert len(storage.token_history) >= 2
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token != first.refresh_token  # rotated
    assert "SDK test client" in person.consent_pages[0]


async def test_client_id_metadata_document(portcullis, docs):
    url = docs.url("/sdk-client.json")
    docs.documents["/sdk-client.json"] = {
        "client_id": url, "client_name": "SDK client by document", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"}
    person, storage = Person("bob@example.com"), Storage()
    names, text = await use(portcullis, provider(portcullis, person, storage, client_metadata_url=url))
    assert "alpha__echo" in names and text == "through oauth"
    assert storage.client_info.client_id == url  # no registration: the URL is the client id
    assert docs.hits["/sdk-client.json"] >= 1
    assert "SDK client by document" in person.consent_pages[0]
