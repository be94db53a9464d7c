"""The /sessions page in headless Chromium (Debian chromium driven by Playwright): live search,
filter chips and pagination kept in the address bar (the back button works), revoke with a
confirmation that can be dismissed, re-authenticate and connect leading to the submission page."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import Credential, VirtualKeyServerGrant
from tests.conftest import PASSWORD
from tests.support.mcp import _cred, _server



@pytest.fixture
def page(browser_context, live_server, app, world):
    with app.app_context():
        for i in range(25):
            sid = _server(f"extra-{i:02d}")
            db.session.add(VirtualKeyServerGrant(virtual_key_id=world.keys["member-key"], mcp_server_id=sid))
            _cred("user", world.member_id, sid, "active", 100 + i)
        newcomer = _server("newcomer")
        db.session.add(VirtualKeyServerGrant(virtual_key_id=world.keys["member-key"], mcp_server_id=newcomer))
        db.session.commit()
    context = browser_context(base_url=live_server)
    page = context.new_page()
    page.set_default_timeout(8000)
    page.goto("/login?next=/sessions")
    page.fill("input[name=email]", "member@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/sessions$"))
    return page


def rows(page):
    return page.locator("#sessions-table tbody tr.session-row")


def test_search_filter_paginate_revoke_reauth(page, app, world):
    w = world
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2 · 29 sessions")
    expect(rows(page)).to_have_count(20)

    # live search: no submit, the address bar follows
    page.fill("input[name=q]", "extra-1")
    expect(rows(page)).to_have_count(10)
    expect(page).to_have_url(re.compile(r"/sessions\?q=extra-1$"))
    expect(page.locator("#sessions-table")).not_to_contain_text("linear")

    # a filter chip keeps the search; toggling it off again brings the rows back
    page.fill("input[name=q]", "")
    expect(rows(page)).to_have_count(20)
    page.click("a.chip[data-filter='status=pending']")
    expect(rows(page)).to_have_count(1)
    expect(page).to_have_url(re.compile(r"/sessions\?status=pending$"))
    expect(rows(page).first).to_have_attribute("id", f"session-{w.fid('member_linear')}")
    page.click("a.chip[data-filter='status=needs_update']")
    expect(page).to_have_url(re.compile(r"/sessions\?status=pending,needs_update$"))
    expect(rows(page)).to_have_count(2)
    page.fill("input[name=q]", "linear")
    expect(page).to_have_url(re.compile(r"/sessions\?q=linear&status=pending(%2C|,)needs_update$"))
    expect(rows(page)).to_have_count(2)
    page.click("a.chip.clear")
    expect(page).to_have_url(re.compile(r"/sessions$"))

    # pagination, the back button, a shared link
    with page.expect_response(re.compile(r"/sessions\?q=$")):  # the debounced search lands before the clicks
        page.fill("input[name=q]", "")
    expect(page).to_have_url(re.compile(r"/sessions\?q=$"))  # ... and its URL is pushed
    page.click("a.chip[data-filter='status=active']")
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2 · 26 sessions")
    page.click(".pager >> text=Next")
    expect(page).to_have_url(re.compile(r"/sessions\?status=active&page=2$"))
    expect(page.locator(".pager")).to_contain_text("Page 2 of 2")
    expect(rows(page)).to_have_count(6)
    page.go_back()
    expect(page).to_have_url(re.compile(r"/sessions\?status=active$"))
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2")
    page.goto("/sessions?status=active&page=2")
    expect(rows(page)).to_have_count(6)
    expect(page.locator("a.chip.on")).to_have_text(["active"])

    # revoke: dismissing the confirmation changes nothing; accepting swaps the row in place
    page.goto("/sessions?q=github")
    row = page.locator(f"#session-{w.cid('member_github')}")
    page.once("dialog", lambda d: d.dismiss())
    row.locator("button:has-text('Revoke')").click()
    expect(row).to_contain_text("Re-authenticate")
    with app.app_context():
        assert db.session.get(Credential, w.creds["member_github"]) is not None
    page.once("dialog", lambda d: (d.message.startswith("Revoke the credential for github") and d.accept()))
    row.locator("button:has-text('Revoke')").click()
    expect(row).to_contain_text("Revoked")
    expect(page).to_have_url(re.compile(r"/sessions\?q=github$"))  # no navigation
    with app.app_context():
        assert db.session.get(Credential, w.creds["member_github"]) is None

    # re-authenticate: the submission page of the binding's flow
    page.goto("/sessions?q=linear&kind=credential")
    page.locator(f"#session-{w.cid('member_linear')} button:has-text('Re-authenticate')").click()
    expect(page).to_have_url(re.compile(rf"/connect/{w.flows['member_linear']}$"))
    expect(page.locator("input[name='header:x-api-key']")).to_be_visible()

    # connect a granted server that has no credential yet
    page.goto("/sessions")
    page.click("button:has-text('Connect newcomer')")
    expect(page).to_have_url(re.compile(r"/connect/[\w-]+$"))
    expect(page.locator("input[name='header:x-api-key']")).to_be_visible()
