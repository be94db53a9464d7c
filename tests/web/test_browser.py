"""The dashboard in headless Chromium (Debian chromium driven by Playwright; no browser download):
log in, create an MCP server and a virtual key, grant the key the server, see the secret once;
and the live search of the servers table."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import VirtualKey
from app.ops import servers as server_ops
from tests.conftest import PASSWORD, make_user
from tests.support.mcp import mcp_url

pytestmark = pytest.mark.usefixtures("real_upstream")  # servers are discovered when created

EMAIL = "browser-admin@example.com"


@pytest.fixture
def page(browser_context, live_server, app):
    make_user(app, EMAIL, "admin")
    context = browser_context(base_url=live_server)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server)
    page = context.new_page()
    page.set_default_timeout(5000)
    page.goto("/login")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/servers$"))
    return page


def test_server_key_grant_and_secret_once(page, app):
    # an MCP server through the form
    page.click("text=New MCP server")
    page.fill("input[name=name]", "browser-srv")
    page.fill("input[name=url]", mcp_url())
    page.select_option("select[name=auth_type]", "none")
    page.click("button:has-text('Create MCP server')")
    expect(page).to_have_url(re.compile(r"/servers$"))
    expect(page.locator("#servers-table")).to_contain_text("browser-srv")

    # a virtual key
    page.click("nav >> text=Virtual keys")
    page.click("text=New virtual key")
    page.fill("input[name=name]", "browser-key")
    page.fill("input[name=rate_limit_per_minute]", "30")
    page.click("button:has-text('Create virtual key')")
    expect(page).to_have_url(re.compile(r"/keys/\d+$"))
    key_url = page.url

    # the secret, once, with a working copy button
    secret_box = page.locator(".secret")
    expect(secret_box).to_have_count(1)
    secret = secret_box.inner_text().strip()
    assert secret.startswith("vk_") and len(secret) >= 43
    expect(page.locator(".reveal")).to_contain_text("it will not be shown again")
    page.click("button[data-copy]")
    expect(page.locator("button[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    # a grant to the server, saved in place by htmx (the secret stays on screen meanwhile)
    grant = page.locator(".grant", has_text="browser-srv")
    grant.locator("input[name=server]").check()
    # the server's tools were discovered at creation: the allowlist is a set of checkboxes
    grant.locator("input[name^='tools:'][value=echo]").check()
    grant.locator("input[name^='tools:'][value=add]").check()
    with page.expect_response(re.compile(r"/keys/\d+/grants$")) as resp:
        page.click("button:has-text('Save grants')")
    assert resp.value.status == 200
    expect(page.locator("#grants")).to_contain_text("Grants saved.")
    expect(page.locator(".secret")).to_have_count(1)
    with app.app_context():
        key = db.session.scalar(db.select(VirtualKey).where(VirtualKey.name == "browser-key"))
        assert key.source == "dashboard" and VirtualKey.hash_of(secret) == key.key_hash
        assert [(g.mcp_server.name, g.tools) for g in key.server_grants] == [("browser-srv", ["add", "echo"])]

    # gone after a reload ...
    page.reload()
    expect(page.locator("#grants")).to_be_visible()
    expect(page.locator(".secret")).to_have_count(0)
    assert secret not in page.content()
    expect(page.locator(".grant", has_text="browser-srv").locator("input[name=server]")).to_be_checked()
    for tool in ("add", "echo"):
        expect(page.locator(".grant", has_text="browser-srv").locator(f"input[name^='tools:'][value={tool}]")).to_be_checked()
    expect(page.locator(".grant", has_text="browser-srv").locator("input[name^='tools:'][value=pixel]")).not_to_be_checked()

    # ... and after navigating away and back
    page.click("nav >> text=Virtual keys")
    expect(page.locator("#keys-table")).to_contain_text("browser-key")
    assert secret not in page.content()
    page.go_back()
    expect(page).to_have_url(key_url)
    expect(page.locator("#grants")).to_be_visible()
    expect(page.locator(".secret")).to_have_count(0)
    assert secret not in page.content()


def test_secret_gone_when_going_back_right_away(page):
    page.goto("/keys/new")
    page.fill("input[name=name]", "back-key")
    page.click("button:has-text('Create virtual key')")
    secret = page.locator(".secret").inner_text().strip()
    assert secret.startswith("vk_")
    page.click("nav >> text=Virtual keys")
    expect(page.locator("#keys-table")).to_contain_text("back-key")
    page.go_back()  # even a page restored from the back/forward cache drops the secret
    expect(page.locator("h1")).to_have_text("back-key")
    expect(page.locator(".secret")).to_have_count(0)
    assert secret not in page.content()


def test_live_search_filters_servers(page, app):
    with app.app_context():
        for name in ("alpha-one", "alpha-two", "beta"):
            server_ops.create_server({"name": name, "url": mcp_url()})
        db.session.commit()
    page.reload()
    rows = page.locator("#servers-table tbody tr")
    expect(rows).to_have_count(3)
    with page.expect_response(re.compile(r"/servers\?q=alp")) as resp:
        page.locator("input[type=search]").press_sequentially("alp", delay=30)
    assert resp.value.status == 200
    expect(rows).to_have_count(2)
    expect(page.locator("#servers-table")).not_to_contain_text("beta")
    expect(page).to_have_url(re.compile(r"/servers\?q=alp$"))  # the search is in the URL
    page.locator("input[type=search]").fill("zzz")
    expect(page.locator("#servers-table")).to_contain_text("No MCP server matches")
    page.locator("input[type=search]").fill("")
    expect(rows).to_have_count(3)
    # a reload of a pushed URL renders the full page with the filter applied
    page.goto("/servers?q=beta")
    expect(rows).to_have_count(1)
    expect(page.locator("input[type=search]")).to_have_value("beta")


def test_refresh_tools_button_swaps_the_tools_card(page, app, faulty, monkeypatch):
    from tests.support.mcp import NEW_TOOLS, add_server

    url, upstream = faulty
    sid = add_server(app, "watched", f"{url}/ok/mcp")
    page.goto(f"/servers/{sid}")
    tools = page.locator("#tools")
    expect(tools.locator("h2 .badge")).to_have_text("1")
    page.evaluate("window.notReloaded = true")
    monkeypatch.setattr(upstream, "TOOLS", NEW_TOOLS)  # the upstream gained a tool
    tools.locator("button:has-text('Refresh tools')").click()
    expect(tools.locator("h2 .badge")).to_have_text("2")
    expect(tools.locator("code", has_text="added")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True  # swapped in place by htmx, not a page load
    expect(page).to_have_url(re.compile(rf"/servers/{sid}$"))
