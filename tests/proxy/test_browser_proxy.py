"""The attack of issue 13 in headless Chromium. A member with write access to a service that
stores uploads (the real HTTP upstream's /files/) puts up an HTML page whose script reads the
CSRF token of the dashboard's /users/new and posts a new admin, then sends an admin the link
/proxy/<service>/evil.html?key=<the member's key>. The admin, logged in to the dashboard, opens
it, or a page elsewhere that frames it. Nothing runs and no user is created, by each layer on
its own: the link is refused (403 key_in_link); without that check (a browser that sends no
Fetch Metadata) the sandboxing headers keep the script from running and the page from being
framed; and without those either, a proxy on its own host (PORTCULLIS_PROXY_BASE_URL) leaves the
script on another origin than the dashboard's."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app import identity
from app.extensions import db
from app.models import User
from app.proxy import forward
from tests.conftest import PASSWORD, make_user
from tests.support.proxy import add_proxy_key, add_service

ADMIN = "proxy-admin@example.com"
INTRUDER = "intruder@example.com"
EVIL = """<!doctype html><title>Quarterly report</title><p id="report">Loading the report...</p>
<script>
console.log("evil-ran");
const dashboard = "%(dashboard)s";
fetch(dashboard + "/users/new", {credentials: "include"})
  .then(r => r.text())
  .then(html => {
    const token = html.match(/name="csrf_token" value="([^"]+)"/)[1];
    const form = new URLSearchParams({csrf_token: token, email: "%(intruder)s",
                                      password: "intruder password 1", role: "admin"});
    return fetch(dashboard + "/users/new", {method: "POST", body: form, credentials: "include"});
  })
  .then(r => console.log("evil-done " + r.status), e => console.log("evil-failed " + e));
</script>"""


@pytest.fixture
def member_key(app, echo, live_server, member_id):
    """The member's write key to a storage service, and evil.html uploaded through the proxy."""
    sid = add_service(app, "files", echo + "/files")
    _, secret = add_proxy_key(app, {sid: "write"}, owner_id=member_id)
    r = httpx.put(f"{live_server}/proxy/files/evil.html", headers={"X-Virtual-Key": secret, "Content-Type": "text/html"},
                  content=(EVIL % {"dashboard": live_server, "intruder": INTRUDER}).encode())
    assert r.status_code == 201, r.text
    return secret


# What the defences make the browser report here, on purpose: refused answers (403 key_in_link,
# 421 wrong_host), a script blocked by the sandbox, a frame refused by frame-ancestors, and the
# dashboard's answers withheld from a script on another origin. Anything else fails the test.
DEFENCES = (r"status of (403|421)", r"sandboxed", r"frame-ancestors|Refused to (frame|display)", r"CORS policy",
            r"net::ERR_FAILED", r"localhost:[0-9]+/favicon\.ico")  # the proxy host serves nothing but /proxy


@pytest.fixture
def admin(browser_context, browser_problems, live_server, app):
    """An admin's browser, logged in to the dashboard through the login form; and its console."""
    make_user(app, ADMIN, "admin")
    for pattern in DEFENCES:
        browser_problems.expect(pattern)
    context = browser_context(base_url=live_server)
    page = context.new_page()
    page.set_default_timeout(10000)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto("/login")
    page.fill("input[name=email]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/servers$"))
    yield page, console


def lure(echo, live_server, member_key) -> str:
    """A page of the member's own, on another origin, that frames the link."""
    url = f"{echo}/elsewhere/files/lure.html"
    page = f'<!doctype html><title>Lure</title><iframe src="{live_server}/proxy/files/evil.html?key={member_key}">'
    assert httpx.put(url, content=page.encode(), headers={"Content-Type": "text/html"}).status_code == 201
    return url


def outcome(app, page, console) -> tuple[bool, bool]:
    """(the script ran, the intruder exists), once a script that ran has finished. The script's
    first line runs while the page is parsed, before the load event that page.goto waits for."""
    if "evil-ran" in console:
        deadline = time.monotonic() + 10
        while not any(m.startswith(("evil-done", "evil-failed")) for m in console) and time.monotonic() < deadline:
            page.wait_for_timeout(50)
    with app.app_context():
        created = db.session.scalar(select(User).where(User.email == INTRUDER)) is not None
    return "evil-ran" in console, created


def test_an_admin_opening_the_link_runs_nothing(app, admin, member_key):
    page, console = admin
    response = page.goto(f"/proxy/files/evil.html?key={member_key}")
    assert outcome(app, page, console) == (False, False)
    assert response.status == 403 and response.json()["error"]["code"] == "key_in_link"
    expect(page.locator("body")).to_contain_text("keys in links are for tools, not browsers")
    page.goto("/users")  # still logged in, and still the only admin
    expect(page.locator("#users-table")).to_contain_text(ADMIN)
    expect(page.locator("#users-table")).not_to_contain_text(INTRUDER)


def test_a_page_elsewhere_framing_the_link_runs_nothing(app, admin, member_key, echo, live_server):
    page, console = admin
    with page.expect_response(re.compile(r"/proxy/files/evil\.html")) as framed:
        page.goto(lure(echo, live_server, member_key))
    assert outcome(app, page, console) == (False, False)
    assert framed.value.status == 403


def test_without_fetch_metadata_the_sandbox_alone_keeps_the_script_from_running(app, admin, member_key, echo,
                                                                                live_server, monkeypatch):
    monkeypatch.setattr(identity, "is_navigation", lambda environ: False)  # a browser that sends no Sec-Fetch-*
    page, console = admin
    response = page.goto(f"/proxy/files/evil.html?key={member_key}")
    assert outcome(app, page, console) == (False, False)
    assert response.status == 200 and response.headers["content-security-policy"].startswith("sandbox;")
    expect(page.locator("#report")).to_have_text("Loading the report...")  # the page is shown, its script not run

    with page.expect_response(re.compile(r"/proxy/files/evil\.html")) as framed:
        page.goto(lure(echo, live_server, member_key))
    assert outcome(app, page, console) == (False, False)
    assert framed.value.status == 200
    assert page.frame_locator("iframe").locator("#report").count() == 0  # frame-ancestors 'none': not shown


def test_on_its_own_host_the_proxy_leaves_a_running_script_on_another_origin(app, admin, member_key, live_server,
                                                                            monkeypatch):
    port = live_server.rsplit(":", 1)[1]
    proxy_base = f"http://localhost:{port}"  # another host name for the same server: another site, even
    monkeypatch.setitem(app.config, "PORTCULLIS_PROXY_BASE_URL", proxy_base)
    page, console = admin
    response = page.goto(f"/proxy/files/evil.html?key={member_key}")  # on the dashboard's host
    assert outcome(app, page, console) == (False, False)
    assert response.status == 421 and response.json()["error"]["code"] == "wrong_host"

    # every other layer gone: the script runs, on the proxy's origin, where the dashboard is not
    monkeypatch.setattr(identity, "is_navigation", lambda environ: False)
    monkeypatch.setattr(forward, "ANSWER_HEADERS", ())
    response = page.goto(f"{proxy_base}/proxy/files/evil.html?key={member_key}")
    assert response.status == 200
    assert outcome(app, page, console) == (True, False)
    assert any(m.startswith("evil-failed") for m in console)  # the dashboard's answers are not the script's to read
