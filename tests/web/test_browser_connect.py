"""The submission page in headless Chromium through the real link with #t= (a vk flow): the
script moves the token into a request header and out of the address bar, the htmx form checks
the value at the upstream and saves it; the agent's retry then works."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.support.mcp import BOB, Rpc, add_key, auth_required, creds, make_server, tool



def test_vk_flow_in_the_browser(app, client, live_server, urls, browser_context, browser_problems):
    sid = make_server(app, urls["one"])
    _, secret = add_key(app, {sid: None}, name="ci-bot")
    rpc = Rpc(client, secret)
    rpc.initialize()
    submit_url = auth_required(rpc)["submit_url"]
    link = live_server + "/connect/" + submit_url.split("/connect/", 1)[1]  # the test server's origin
    token = link.split("#t=", 1)[1]
    context = browser_context()
    page = context.new_page()
    page.set_default_timeout(8000)
    seen_urls = []
    page.on("request", lambda req: seen_urls.append(req.url))
    page.goto(link)
    field = page.locator("input[name='header:x-api-key']")
    expect(field).to_be_visible()
    assert "#t=" not in page.url and token not in page.url  # out of the address bar
    # whose credential it becomes is on screen, above the field, before anything is typed
    whose = page.locator("#connect-whose")
    expect(whose).to_contain_text("the virtual key ci-bot (no owner) on the server keyed")
    assert whose.bounding_box()["y"] < field.bounding_box()["y"]
    field.fill("wrong-" + BOB)
    browser_problems.expect(r"status of 422 .*/connect/")  # the upstream's refusal, shown in the form
    page.click("button:has-text('Check and save')")
    expect(page.locator("[role=alert]").first).to_contain_text("401")
    assert creds(app) == []
    page.locator("input[name='header:x-api-key']").fill(BOB)
    page.click("button:has-text('Check and save')")
    expect(page.locator("#connect-body")).to_contain_text("retry in your agent now")
    assert creds(app) == [("vk", "active", ["x-api-key"])]
    assert not [u for u in seen_urls if token in u]  # never in a URL sent to the server
    assert tool(rpc)["structuredContent"]["x-api-key"] == BOB
