"""The MCP conformance suite's client-side authorization scenarios against Portcullis's upstream
OAuth client (app/upstream_oauth): this script is the "client" the suite runs with the URL of its
test server (`conformance client --command "python tests/conformance/upstream_oauth_client.py"`).

It builds a throw-away Portcullis (SQLite in a temporary folder, served in-process), registers the
suite's server as a per_user_oauth upstream, and connects an admin exactly as the dashboard does:
/connect/<flow>/authorize (discovery from the 401, registration, PKCE, resource) -> the suite's
authorization endpoint (which approves at once) -> /connect/callback (state, iss, code exchange,
tools discovered with the token) -> one tools/call through /mcp with a virtual key; when that call
answers auth-required (a step-up: the upstream asked for wider scope), the admin consents again
through the new flow and the call is retried once.
usage: python tests/conformance/upstream_oauth_client.py <server-url>
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

PASSWORD = "conformance password 1"


def main(server_url: str) -> int:
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.models import User
    from app.ops.keys import create_key
    from app.ops.servers import create_server
    from app.credentials.bindings import Binding
    from app.credentials.resolvers import resolver
    from tests.support.web import Web

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"INSTANCE_PATH": tmp, "SECRET_KEY": "conformance", "DATABASE_URL": f"sqlite:///{tmp}/c.db",
                          "PORTCULLIS_ENCRYPTION_KEY": Fernet.generate_key().decode(), "PORTCULLIS_SWEEP": False,
                          "PORTCULLIS_LOGIN_RATE_LIMIT": "1000 per minute"})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            admin = User(email="admin@example.com", role="admin")
            admin.set_password(PASSWORD)
            db.session.add(admin)
            db.session.flush()
            fields = {"name": "suite", "url": server_url, "auth_type": "per_user_oauth"}
            context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
            if context.get("client_id") and not context.get("private_key_pem"):  # a pre-registered client
                fields["oauth"] = {k: context[k] for k in ("client_id", "client_secret") if context.get(k)}
            server = create_server(fields)
            db.session.flush()
            _, key = create_key({"name": "agent", "owner_id": admin.id,
                                 "mcp_servers": [{"server_id": server.id, "tools": None}]}, source="api")
            db.session.commit()
            flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin.id, server.id))
            sid = server.id
        web = Web(_client(app)).login("admin@example.com", PASSWORD)
        if not _connect(app, web, flow_id):
            return 1
        with app.app_context():
            from app.models import McpServer
            tools = db.session.get(McpServer, sid).tools
        client = _client(app)
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
            headers=headers)
        headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
        client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        if tools:
            r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": f"suite__{tools[0]['name']}", "arguments": {}}}, headers=headers)
            answer = _message(r)
            if not isinstance(answer, dict):
                print("tools/call failed:", r.status_code, r.get_data(as_text=True)[:300], file=sys.stderr)
                return 1
            needed = ((answer.get("result") or {}).get("_meta") or {}).get("portcullis/auth_required")
            if needed:  # step-up: the upstream asked for wider scope; consent again, then retry once
                print("auth required again:", answer["result"]["content"][0]["text"][:200], file=sys.stderr)
                if not _connect(app, web, needed["flow_id"]):
                    return 1
                r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                    "name": f"suite__{tools[0]['name']}", "arguments": {}}}, headers=headers)
                answer = _message(r)
            print(json.dumps(answer)[:300], file=sys.stderr)
        return 0


def _message(r) -> dict | None:
    """The JSON-RPC answer of a POST to /mcp: a JSON body, or the last message of an SSE stream."""
    if r.mimetype == "text/event-stream":
        data = [line[5:].strip() for line in r.get_data(as_text=True).splitlines() if line.startswith("data:")]
        return json.loads(data[-1]) if data else None
    return r.get_json(silent=True)


def _client(app):
    """A test client that speaks the base URL's scheme, as a browser there would (Flask's test
    requests take PREFERRED_URL_SCHEME: an HTTPS base URL's secure cookies come back, and its form
    posts are checked against a same-origin Referer)."""
    client = app.test_client()
    scheme = app.config["PREFERRED_URL_SCHEME"]
    client.environ_base["HTTP_REFERER"] = f"{scheme}://localhost/login"
    return client


def _connect(app, web, flow_id: str) -> bool:
    """/connect/<flow>/authorize -> the suite's authorization endpoint -> /connect/callback."""
    r = web.get(f"/connect/{flow_id}/authorize")
    if r.status_code != 303:
        print("authorize step failed:", r.status_code, r.get_data(as_text=True)[:500], file=sys.stderr)
        return False
    url, callback = r.headers["Location"], app.config["PORTCULLIS_BASE_URL"] + "/connect/callback"
    with httpx.Client(timeout=10) as browser:  # the suite's authorization endpoint approves by itself
        for _ in range(10):
            if url.startswith(callback):
                break
            r2 = browser.get(url)
            if r2.status_code not in (301, 302, 303, 307, 308):
                print("authorization stopped:", r2.status_code, r2.text[:300], file=sys.stderr)
                return False
            url = urljoin(url, r2.headers["Location"])
    back = urlsplit(url)
    done = web.get(back.path + "?" + back.query)
    if done.status_code != 200:
        print("callback failed:", done.status_code, done.get_data(as_text=True)[:800], file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("PORTCULLIS_ENFORCE_AUTH", "true")
    sys.exit(main(sys.argv[1]))
