"""Every answer Flask serves carries the anti-framing, anti-sniffing, referrer and content
security headers: dashboard pages and fragments, API answers, error pages (ours and Flask's own),
static files. In headless Chromium every page works under that policy without a violation."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.ops import keys as key_ops
from app.ops import services as service_ops
from app.ops import users as user_ops
from tests.conftest import PASSWORD, make_user
from tests.support.web import HX, Web


def policy(resp) -> dict[str, str]:
    csp = resp.headers.get("Content-Security-Policy")
    assert csp, f"no Content-Security-Policy on {resp.request.path}"
    return {d.split()[0]: " ".join(d.split()[1:]) for d in csp.split(";") if d.strip()}


def assert_headers(resp) -> None:
    where = f"{resp.request.method} {resp.request.path} ({resp.status_code})"
    assert resp.headers.get("X-Frame-Options") == "DENY", where
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", where
    assert resp.headers.get("Referrer-Policy") == "same-origin", where
    p = policy(resp)
    assert p["frame-ancestors"] == "'none'", where
    assert p["default-src"] == "'self'" and p["script-src"] == "'self'" and p["style-src"] == "'self'", where
    assert (p["object-src"], p["base-uri"], p["form-action"]) == ("'none'", "'none'", "'self'"), where
    assert "unsafe" not in resp.headers["Content-Security-Policy"], where


@pytest.fixture
def admin(client, admin_id) -> Web:
    return Web(client).login("admin@example.com")


def test_dashboard_pages_fragments_and_errors(client, admin, app):
    with app.app_context():
        service = service_ops.create_service({"name": "billing", "base_url": "http://127.0.0.1:9/",
                                              "secret": "s3cret-value"})
        db.session.commit()
        service_id = service.id
    answers = [
        admin.get("/servers"), admin.get("/servers", htmx=True), admin.get("/keys/new"),
        admin.get(f"/services/{service_id}"), admin.get("/sessions"), admin.get("/sessions?q=x", htmx=True),
        admin.get("/audit", htmx=True),
        admin.get("/users/999"),  # our 404 page
        admin.client.post("/logout"),  # no CSRF token: our 400 page
        admin.get("/nope"),  # Flask's own 404, outside any blueprint
        admin.client.put("/login"),  # Flask's own 405
        client.get("/static/app.css"), client.get("/static/htmx.min.js"), client.get("/static/favicon.svg"),
    ]
    codes = [r.status_code for r in answers]
    assert codes == [200, 200, 200, 200, 200, 200, 200, 404, 400, 404, 405, 200, 200, 200]
    for resp in answers:
        assert_headers(resp)
    anonymous = app.test_client()
    for resp in (anonymous.get("/login"), anonymous.get("/servers"), anonymous.get("/servers", headers=HX)):
        assert resp.status_code in (200, 302), resp.status_code  # the page, a redirect, an HX-Redirect
        assert_headers(resp)


def test_api_answers(admin_api, anon_api, client):
    answers = [
        (admin_api.get("/users"), 200), (admin_api.get("/users/999"), 404),
        (admin_api.post("/users", json={"email": "x"}), 422),
        (client.post("/api/v1/users", data="{", headers={"Authorization": f"Bearer {admin_api.token}"}), 400),
        (anon_api.get("/users"), 401), (anon_api.get("/openapi.json"), 200),
        (admin_api.get("/nope"), 404), (admin_api.client.put("/api/v1/users"), 405),
    ]
    for resp, status in answers:
        assert resp.status_code == status, (resp.request.path, resp.status_code)
        assert_headers(resp)


# -- in the browser ------------------------------------------------------------------------

@pytest.fixture
def page(app, browser_context, live_server):
    make_user(app, "csp-admin@example.com", "admin")
    page = browser_context(base_url=live_server).new_page()
    page.set_default_timeout(8000)
    page.goto("/login")
    page.fill("input[name=email]", "csp-admin@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/servers$"))
    return page


def test_every_page_works_under_the_policy(app, page):
    """Each page loads its scripts under the policy and its htmx works (a live search, a grants
    save, a revoke); any CSP violation or console error fails the test (browser_context)."""
    with app.app_context():
        member = user_ops.create_user({"email": "m@example.com", "password": "a-long-password"})
        service = service_ops.create_service({"name": "billing", "base_url": "http://127.0.0.1:9/",
                                              "secret": "s3cret-value"})
        key, _ = key_ops.create_key({"name": "k1"}, "dashboard")
        db.session.commit()
        ids = {"user": member.id, "service": service.id, "key": key.id}
    for path in ["/servers", "/servers/new", "/keys", "/keys/new", f"/keys/{ids['key']}", "/services",
                 "/services/new", f"/services/{ids['service']}", "/users", "/users/new", f"/users/{ids['user']}",
                 "/sessions", "/audit", "/account/password"]:
        resp = page.goto(path)
        assert resp.status == 200, path
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"], path
        assert page.evaluate("typeof window.htmx") == "object", path
    for path, table in [("/keys", "#keys-table"), ("/users", "#users-table"), ("/sessions", "#sessions-table"),
                        ("/audit", "#audit-table")]:
        page.goto(path)
        with page.expect_response(re.compile(r"\?q=zz")) as resp:
            page.locator("input[type=search]").fill("zz")
        assert resp.value.status == 200 and resp.value.request.headers.get("hx-request") == "true", path
        expect(page.locator(table)).to_be_visible()
    page.goto(f"/keys/{ids['key']}")
    with page.expect_response(re.compile(r"/grants$")) as resp:
        page.click("button:has-text('Save grants')")
    assert resp.value.status == 200
    expect(page.locator("#grants")).to_contain_text("Grants saved.")
    page.goto("/keys")
    page.once("dialog", lambda d: d.accept())
    page.locator("#keys-table button:has-text('Revoke')").click()
    expect(page.locator("#keys-table")).to_contain_text("revoked")


def test_a_violation_or_script_error_is_caught(browser_context, browser_problems, live_server):
    """The guard itself: an inline script refused by the policy and an uncaught error are both
    reported, so a page that needed 'unsafe-inline' could not pass a browser test."""
    page = browser_context(base_url=live_server).new_page()
    page.goto("/login")
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        page.evaluate("""() => { const s = document.createElement('script');
                                 s.textContent = 'window.ran = true'; document.head.append(s); }""")
    assert page.evaluate("window.ran") is None  # refused
    with page.expect_event("pageerror"):
        page.evaluate("setTimeout(() => { throw new Error('planted error'); })")
    problems = browser_problems.unexpected()
    assert len(problems) == 2
    assert "Content Security Policy" in problems[0] and "planted error" in problems[1]
    browser_problems.expect("Content Security Policy|planted error")  # seen; do not fail this test for them
