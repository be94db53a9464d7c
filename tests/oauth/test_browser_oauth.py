"""The consent in headless Chromium: an app sends the person to /oauth/authorize, they log in,
choose one of their keys, allow, and land on the app's redirect with a code; the token it gets
acts as that key. On Connected apps they revoke it, and the token stops working."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from playwright.sync_api import expect
from sqlalchemy import select

from app.extensions import db
from app.models import OAuthConsent
from tests.conftest import PASSWORD
from tests.support.mcp import Rpc, add_key, add_server
from tests.support.oauth import BASE, authorize_url, exchange, pkce, register

@pytest.fixture
def client_app():
    """The client app's redirect endpoint, a real HTTP server on loopback that records what the
    browser brought back."""
    landed = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            landed.append(self.path)
            body = b"<!doctype html><title>app</title><p id=done>signed in</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/callback", landed
    server.shutdown()
    server.server_close()


def test_consent_as_a_key_then_revoke_on_connected_apps(app, client, live_server, browser_context, member_id,
                                                        upstreams, client_app):
    APP_REDIRECT, landed = client_app
    alpha = add_server(app, "alpha", upstreams["alpha"])
    key_id, _ = add_key(app, {alpha: ["echo"]}, name="laptop", owner_id=member_id)
    app_client = register(client, client_name="Browser App", redirect_uris=[APP_REDIRECT])
    verifier, challenge = pkce()
    url = live_server + authorize_url(app_client["client_id"], challenge, redirect_uri=APP_REDIRECT, state="b-1")

    context = browser_context()
    page = context.new_page()
    page.set_default_timeout(8000)
    page.goto(url)
    page.fill("input[name=email]", "member@example.com")  # sent to login first, then back
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Connect Browser App")
    expect(page.locator("dl.facts")).to_contain_text(urlsplit(APP_REDIRECT).netloc)
    page.check("input[name=mode][value=vk]")
    page.select_option("select[name=key_id]", str(key_id))
    page.click("button:has-text('Allow')")
    expect(page.locator("#done")).to_have_text("signed in")
    q = {k: v[0] for k, v in parse_qs(urlsplit(landed[0]).query).items()}  # the path the app received
    assert q["state"] == "b-1" and q["iss"] == BASE and q["code"]

    token = exchange(client, app_client["client_id"], q["code"], verifier, APP_REDIRECT).get_json()["access_token"]
    rpc = Rpc(client, token)
    rpc.initialize()
    tools = {t["name"] for t in rpc.call("tools/list").json["result"]["tools"]}
    assert {t for t in tools if not t.startswith("portcullis__")} == {"alpha__echo"}  # exactly the key's grant

    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(live_server + "/connected-apps")
    row = page.locator("#connected-apps-table tbody tr").first
    expect(row).to_contain_text("Browser App")
    expect(row).to_contain_text("key laptop")
    row.locator("button:has-text('Revoke')").click()
    expect(page.locator("#connected-apps-table")).to_contain_text("revoked")
    with app.app_context():
        assert db.session.scalar(select(OAuthConsent.revoked_at)) is not None
    assert rpc.call("tools/list").status_code == 401
