"""/proxy answers never run as the dashboard: every answer on /proxy is sandboxed, a browser
opening a ``?key=`` link is refused, the dashboard's login is worth nothing on /proxy and /mcp,
and PORTCULLIS_PROXY_BASE_URL gives the proxy a host of its own. Flask's test client against
the real HTTP echo upstream and a real upstream MCP server, and one gunicorn-served instance
for the host setting behind a trusted reverse proxy. The attack itself, in Chromium:
tests/proxy/test_browser_proxy.py."""
from __future__ import annotations

import re
import subprocess

import httpx
import pytest
from werkzeug.middleware.proxy_fix import ProxyFix

from app import snapshot
from app.proxy import host_values
from tests.conftest import PASSWORD
from tests.support.mcp import add_key, add_server, free_port, gateway_instance, serve, stop, wait_ready
from tests.support.proxy import add_proxy_key, add_service, seen_headers

SANDBOX = ("sandbox", "default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
ACCEPT = "application/json, text/event-stream"
PROXY_HOST = "https://proxy.test"


@pytest.fixture
def svc(app, echo):
    return add_service(app, "echo", echo + "/base")


def vk(secret):
    return {"X-Virtual-Key": secret}


def assert_sandboxed(r):
    """Our policy once (an upstream's own may stand beside it), our nosniff and CORP only, and
    nothing that acts on the browser's origin."""
    ours = [p for p in r.headers.getlist("Content-Security-Policy") if p.startswith("sandbox")]
    assert [tuple(d.strip() for d in p.split(";")) for p in ours] == [SANDBOX], r.headers
    assert r.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert r.headers.getlist("Cross-Origin-Resource-Policy") == ["same-origin"]
    for gone in ("Service-Worker-Allowed", "Clear-Site-Data", "Set-Cookie"):
        assert gone not in r.headers, gone


def assert_error(r, status, code):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/json" and r.json["error"]["code"] == code and r.json["error"]["message"]
    assert_sandboxed(r)


# -- every answer sandboxed ---------------------------------------------------------------------

def test_relayed_answers_are_sandboxed_and_our_headers_win(app, client, svc, echo):
    _, secret = add_proxy_key(app, {svc: "write"})
    r = client.get("/proxy/echo/status?code=200", headers=vk(secret))  # sends SWA, Clear-Site-Data, CSP, ...
    assert r.status_code == 200 and r.json["method"] == "GET"
    assert_sandboxed(r)
    assert sorted(r.headers.getlist("Content-Security-Policy")) == ["img-src 'self'", "; ".join(SANDBOX)]

    assert httpx.put(echo + "/base/files/page.html", content=b"<script>alert(1)</script>",
                     headers={"Content-Type": "text/html"}).status_code == 201
    r = client.get("/proxy/echo/files/page.html", headers=vk(secret))
    assert r.status_code == 200 and r.mimetype == "text/html"  # the upstream's type, sandboxed
    assert_sandboxed(r)
    for path in ("/proxy/echo/x", "/proxy/echo/status?code=204", "/proxy/echo/status?code=404",
                 "/proxy/echo/redirect?to=/base/y", "/proxy/echo/files/none"):
        r = client.get(path, headers=vk(secret))
        assert r.status_code in (200, 204, 302, 404)
        assert_sandboxed(r)
    r = client.head("/proxy/echo/download?bytes=10", headers=vk(secret))
    assert r.status_code == 200
    assert_sandboxed(r)


def test_the_proxys_own_errors_are_sandboxed(app, client, svc, monkeypatch):
    other = add_service(app, "down", f"http://127.0.0.1:{free_port()}")
    _, reader = add_proxy_key(app, {svc: "read", other: "read"}, rate_limit_per_minute=2)
    assert_error(client.get("/proxy/echo/x"), 401, "missing_key")
    assert_error(client.get("/proxy/echo/x", headers=vk("vk_nope")), 401, "invalid_key")
    assert_error(client.get("/proxy/nosuch/x", headers=vk(reader)), 403, "service_not_granted")
    assert_error(client.post("/proxy/echo/x", headers=vk(reader)), 403, "read_only")
    assert_error(client.get(f"/proxy/echo/x?key={reader}", headers={"Sec-Fetch-Mode": "navigate"}), 403,
                 "key_in_link")
    assert_error(client.open("/proxy/echo/x", method="TRACE", headers=vk(reader)), 405, "method_not_allowed")
    assert_error(client.get("/proxy/echo/..;/x", headers=vk(reader)), 400, "invalid_path")
    assert_error(client.get("/proxy/down/x", headers=vk(reader)), 502, "upstream_unreachable")
    assert_error(client.get("/proxy/echo/x", headers=vk(reader)), 429, "rate_limited")

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(snapshot, "current", broken)
    assert_error(client.get("/proxy/echo/x", headers=vk(reader)), 500, "internal_error")


# -- a browser opening a link with the key -------------------------------------------------------

NAVIGATIONS = [{"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}, {"Sec-Fetch-Mode": "navigate"},
               {"Sec-Fetch-Mode": "NAVIGATE", "Sec-Fetch-Dest": "empty"}] + \
              [{"Sec-Fetch-Dest": dest} for dest in ("document", "iframe", "frame", "embed", "object", "IFrame")]


@pytest.mark.parametrize("fetch", NAVIGATIONS)
def test_a_browser_opening_a_key_link_is_refused_before_anything_is_counted(app, client, svc, fetch):
    _, secret = add_proxy_key(app, {svc: "write"}, rate_limit_per_minute=1)
    for url in (f"/proxy/echo/x?key={secret}", f"/proxy/echo/x?a=1&key={secret}", "/proxy/echo/x?key=vk_unknown",
                f"/proxy/nosuch?key={secret}"):
        r = client.get(url, headers=fetch)
        assert_error(r, 403, "key_in_link")
        assert "keys in links are for tools, not browsers" in r.json["error"]["message"]
        assert "RateLimit-Remaining" not in r.headers
    # nothing was spent: the budget's one request is still there
    r = client.get("/proxy/echo/x", headers=vk(secret))
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "0"


def test_tools_and_browser_fetches_with_a_key_are_not_navigations(app, client, svc):
    _, secret = add_proxy_key(app, {svc: "write"})
    link = f"/proxy/echo/x?key={secret}"
    for headers in ({}, {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
                    {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}):
        r = client.get(link, headers=headers)  # curl, fetch(), an <img>: not a page
        assert r.status_code == 200, headers
        assert_sandboxed(r)
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    for headers in (vk(secret), {"Authorization": f"Bearer {secret}"}):  # a tool sending Sec-Fetch-* itself
        assert client.get("/proxy/echo/x", headers={**navigate, **headers}).status_code == 200
        assert client.get(link, headers={**navigate, **headers}).status_code == 200  # the same key in both


# -- the dashboard's login on /proxy and /mcp ---------------------------------------------------

def dashboard_login(client, email: str) -> str:
    """A real login through the form; returns the session cookie's value."""
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302
    assert client.get("/servers").status_code == 200  # logged in as an admin
    return client.get_cookie(app_cookie(client)).value


def app_cookie(client) -> str:
    return client.application.config["SESSION_COOKIE_NAME"]


def test_the_dashboard_login_is_worth_nothing_on_proxy_and_never_reaches_the_upstream(app, client, admin_id, svc):
    cookie = dashboard_login(client, "admin@example.com")
    for method in ("GET", "POST", "DELETE"):
        r = client.open("/proxy/echo/x", method=method)  # the browser's cookie only
        assert_error(r, 401, "missing_key")
    assert_error(client.get("/proxy/echo/x", headers={"Sec-Fetch-Mode": "navigate"}), 401, "missing_key")

    _, secret = add_proxy_key(app, {svc: "write"})
    r = client.post("/proxy/echo/x", headers=vk(secret), data=b"body")  # the cookie goes along
    assert r.status_code == 200
    assert "cookie" not in seen_headers(r.json) and cookie not in r.get_data(as_text=True)
    assert "Set-Cookie" not in r.headers
    assert client.get("/servers").status_code == 200  # the login itself is untouched


def test_the_dashboard_login_is_worth_nothing_on_mcp_and_never_reaches_the_upstream(app, client, admin_id,
                                                                                     upstreams):
    add_server(app, "alpha", upstreams["alpha"], allow_on_all_virtual_keys=True)
    cookie = dashboard_login(client, "admin@example.com")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    for path in ("/mcp", "/mcp/alpha"):
        r = client.post(path, json=init, headers={"Accept": ACCEPT})
        assert r.status_code == 401, r.get_data(as_text=True)
        assert r.json["error"]["code"] and "Mcp-Session-Id" not in r.headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Set-Cookie" not in r.headers

    _, secret = add_key(app)
    result = mcp_call(client, secret, "alpha__headers", {})  # with the key, and the cookie going along
    assert not result["isError"]
    assert "cookie" not in result["structuredContent"] and cookie not in str(result)


def mcp_call(client, secret: str, tool: str, arguments: dict, path: str = "/mcp") -> dict:
    """initialize, then one tools/call; the call's result."""
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {secret}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = client.post(path, json=init, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    r = client.post(path, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                "params": {"name": tool, "arguments": arguments}}, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json["result"]


# -- the proxy on a host of its own ---------------------------------------------------------------

@pytest.fixture
def split(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTCULLIS_PROXY_BASE_URL", PROXY_HOST)


def test_the_dashboards_host_refuses_the_proxy_and_the_proxys_host_serves_nothing_else(app, client, svc, split,
                                                                                     admin_id):
    _, secret = add_proxy_key(app, {svc: "write"}, rate_limit_per_minute=3)
    for path in ("/proxy/echo/x", "/proxy", "/proxy/", f"/proxy/echo/x?key={secret}"):
        r = client.get(path, headers=vk(secret))  # Host: localhost, the dashboard's
        assert_error(r, 421, "wrong_host")
        assert f"{PROXY_HOST}/proxy/<service>/<path>" in r.json["error"]["message"]
        assert "RateLimit-Remaining" not in r.headers  # refused before anything was counted
    assert_error(client.get("/proxy/echo/x", headers=vk(secret), base_url="https://proxy.test:8443"), 421,
                 "wrong_host")  # another origin of that name

    for base in (PROXY_HOST, "https://PROXY.test:443"):
        r = client.get("/proxy/echo/x", headers=vk(secret), base_url=base)
        assert r.status_code == 200 and r.json["path"] == "/base/x"
        assert_sandboxed(r)
    r = client.get("/proxy/echo/redirect?to=/base/next", headers=vk(secret), base_url=PROXY_HOST)
    assert r.status_code == 302 and r.headers["Location"] == f"{PROXY_HOST}/proxy/echo/next"  # on the proxy's host

    cookie = dashboard_login(client, "admin@example.com")  # on the dashboard's host
    client.set_cookie(app_cookie(client), cookie, domain="proxy.test")  # and, say, a cookie for the proxy's too
    for method, path in (("GET", "/login"), ("POST", "/login"), ("GET", "/servers"), ("GET", "/"),
                         ("POST", "/users/new"), ("GET", "/static/htmx.min.js"), ("GET", "/api/v1/openapi.json"),
                         ("GET", "/api/v1/users"), ("POST", "/mcp"), ("POST", "/mcp/alpha"), ("GET", "/proxyish")):
        r = client.open(path, method=method, base_url=PROXY_HOST)
        assert_error(r, 404, "not_found")
        assert "serves the proxy only" in r.json["error"]["message"]
    assert client.get("/servers").status_code == 200  # the dashboard is where it was


def test_proxy_urls_of_the_mcp_tools_name_the_proxys_host(app, client, svc, split):
    _, secret = add_proxy_key(app, {svc: "write"})
    result = mcp_call(client, secret, "portcullis__list_services", {})
    assert result["structuredContent"]["services"][0]["proxy_url"] == f"{PROXY_HOST}/proxy/echo"
    result = mcp_call(client, secret, "portcullis__request_key", {"service_name": "echo"})
    assert result["structuredContent"]["proxy_url"] == f"{PROXY_HOST}/proxy/echo"
    issued = result["structuredContent"]["key"]
    assert client.get("/proxy/echo/x", headers=vk(issued), base_url=PROXY_HOST).status_code == 200


def test_behind_a_trusted_reverse_proxy_the_forwarded_host_counts(app, client, svc, split, monkeypatch):
    _, secret = add_proxy_key(app, {svc: "write"})
    forwarded = {**vk(secret), "X-Forwarded-Host": "proxy.test", "X-Forwarded-Proto": "https"}
    assert_error(client.get("/proxy/echo/x", headers=forwarded), 421, "wrong_host")  # not trusted: Host decides
    # what create_app wraps around everything with PORTCULLIS_TRUSTED_PROXIES=1
    monkeypatch.setattr(app, "wsgi_app", ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1))
    assert client.get("/proxy/echo/x", headers=forwarded).status_code == 200
    assert_error(client.get("/login", headers={"X-Forwarded-Host": "proxy.test"}), 404, "not_found")
    assert client.get("/login", headers={"X-Forwarded-Host": "localhost"}).status_code == 200
    assert_error(client.get("/proxy/echo/x", headers={**vk(secret), "X-Forwarded-Host": "localhost"},
                            base_url=PROXY_HOST), 421, "wrong_host")


def test_proxy_base_url_served_by_gunicorn_behind_a_trusted_proxy(tmp_path, echo):
    """The setting as deployed: environment -> config -> ProxyFix outermost -> the host check."""
    port = free_port()
    setup = f"""
from app.ops.services import create_service
from app.ops.keys import create_key
svc = create_service({{"name": "echo", "base_url": "{echo}/base", "secret": "s"}})
db.session.flush()
key, secret = create_key({{"name": "k", "services": [{{"service_id": svc.id, "scope": "read"}}]}}, source="api")
db.session.commit()
print(secret)
"""
    env, secret = gateway_instance(str(tmp_path), port, setup, PORTCULLIS_PROXY_BASE_URL="https://proxy.test",
                                   PORTCULLIS_BASE_URL="https://dash.test", PORTCULLIS_TRUSTED_PROXIES="1",
                                   PORTCULLIS_SWEEP="false")
    proc = serve("wsgi:app", env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + "/login")
        key = {"X-Virtual-Key": secret}
        with httpx.Client(base_url=base, timeout=10) as http:
            for host, status in (("dash.test", 421), ("proxy.test", 200), (f"127.0.0.1:{port}", 421)):
                r = http.get("/proxy/echo/x", headers={**key, "X-Forwarded-Host": host})
                assert r.status_code == status, (host, r.text)
                assert r.headers["content-security-policy"] == "; ".join(SANDBOX)
            r = http.get("/proxy/echo/redirect?to=/base/y", headers={**key, "X-Forwarded-Host": "proxy.test"})
            assert r.headers["location"] == "https://proxy.test/proxy/echo/y"
            assert http.get("/login", headers={"X-Forwarded-Host": "dash.test"}).status_code == 200
            r = http.get("/login", headers={"X-Forwarded-Host": "proxy.test"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    finally:
        stop(proc)


def test_proxy_base_url_setting_is_validated(tmp_path, monkeypatch):
    from app.config import load_config

    monkeypatch.setattr("app.config.load_dotenv", lambda **kw: None)
    monkeypatch.setenv("PORTCULLIS_BASE_URL", "https://portcullis.example.com")
    monkeypatch.delenv("PORTCULLIS_PROXY_BASE_URL", raising=False)
    assert load_config(str(tmp_path))["PORTCULLIS_PROXY_BASE_URL"] is None
    for value, stored in (("https://proxy.example.com", "https://proxy.example.com"),
                          ("HTTPS://Proxy.Example.COM/", "https://proxy.example.com"),
                          ("http://127.0.0.1:8081", "http://127.0.0.1:8081"), ("  ", None)):
        monkeypatch.setenv("PORTCULLIS_PROXY_BASE_URL", value)
        assert load_config(str(tmp_path))["PORTCULLIS_PROXY_BASE_URL"] == stored, value
    for bad in ("proxy.example.com", "ftp://proxy.example.com", "https://", "https://proxy.example.com/api",
                "https://proxy.example.com?x=1", "https://proxy.example.com#f", "https://u:p@proxy.example.com",
                "https://proxy.example.com:99999", "https://proxy.example.com:x",
                "https://portcullis.example.com:8443"):  # the dashboard's host on another port: same cookies
        monkeypatch.setenv("PORTCULLIS_PROXY_BASE_URL", bad)
        with pytest.raises(RuntimeError, match="PORTCULLIS_PROXY_BASE_URL"):
            load_config(str(tmp_path))


def test_host_values_with_and_without_default_ports():
    assert host_values("https://p.example.com") == {"p.example.com", "p.example.com:443"}
    assert host_values("http://p.example.com:80") == {"p.example.com", "p.example.com:80"}
    assert host_values("http://p.example.com:8080") == {"p.example.com:8080"}
    assert host_values("http://[::1]:8080") == {"[::1]:8080"}
