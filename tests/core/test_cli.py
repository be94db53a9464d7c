"""CLI commands: create-admin and ensure-admin (what `make run` prints), refresh-tools."""
import re

from app.extensions import db
from app.models import AuditEvent, User


def login(client, email, password):
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def test_create_admin_creates_then_promotes(app):
    runner = app.test_cli_runner()
    r = runner.invoke(args=["create-admin", "--email", "Boss@Example.com", "--password", "long enough pw"])
    assert r.exit_code == 0, r.output
    assert "admin boss@example.com is ready" in r.output
    r = runner.invoke(args=["create-admin", "--email", "boss@example.com", "--password", "short"])
    assert r.exit_code != 0 and "at least 10" in r.output
    with app.app_context():
        user = db.session.scalar(db.select(User))
        assert user.email == "boss@example.com" and user.role == "admin" and user.check_password("long enough pw")


def test_ensure_admin_prints_a_one_time_password_that_must_be_changed(app, client, monkeypatch):
    monkeypatch.delenv("PORTCULLIS_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("PORTCULLIS_ADMIN_PASSWORD", raising=False)
    r = app.test_cli_runner().invoke(args=["ensure-admin"])
    assert r.exit_code == 0, r.output
    password = re.search(r"password: (\S+)", r.output).group(1)
    assert "admin@localhost" in r.output
    resp = login(client, "admin@localhost", password)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/password")
    # Until the password is changed every page leads back to the change form.
    assert client.get("/").headers["Location"].endswith("/account/password")
    # Restarting before the first login issues a fresh one-time password (the old one is void).
    again = app.test_cli_runner().invoke(args=["ensure-admin"])
    assert "password:" in again.output and password not in again.output


def test_ensure_admin_uses_the_environment_and_never_prints_its_password(app, monkeypatch):
    monkeypatch.setenv("PORTCULLIS_ADMIN_EMAIL", "ops@example.com")
    monkeypatch.setenv("PORTCULLIS_ADMIN_PASSWORD", "from the environment")
    r = app.test_cli_runner().invoke(args=["ensure-admin"])
    assert r.exit_code == 0
    assert "ops@example.com" in r.output and "from the environment" not in r.output
    with app.app_context():
        user = db.session.scalar(db.select(User))
        assert user.is_admin and not user.must_change_password
        assert db.session.scalar(db.select(AuditEvent.action)) == "user.bootstrap_admin"
    r = app.test_cli_runner().invoke(args=["ensure-admin"])
    assert r.exit_code == 0, r.output
    assert f"Log in at {app.config['PORTCULLIS_BASE_URL']}/login as ops@example.com with PORTCULLIS_ADMIN_PASSWORD." \
        in r.output


def test_refresh_tools_rediscovers_enabled_servers_and_reports_failures(app, faulty, monkeypatch):
    from app.models import McpServer
    from tests.support.mcp import NEW_TOOLS, add_server, free_port, stored_tools

    url, upstream = faulty
    for name in ("one", "two", "off"):
        add_server(app, name, f"{url}/ok/mcp")
    add_server(app, "mine", f"{url}/ok/mcp", auth_type="per_user_headers", per_user_header_keys=["x-k"],
               sample_headers={"x-k": "sample"})
    with app.app_context():
        db.session.scalar(db.select(McpServer).filter_by(name="off")).enabled = False
        db.session.commit()
    assert stored_tools(app, "one") == ["x"]
    monkeypatch.setattr(upstream, "TOOLS", NEW_TOOLS)  # the upstream gained a tool
    runner = app.test_cli_runner()

    r = runner.invoke(args=["refresh-tools", "--name", "one"])
    assert r.exit_code == 0, r.output
    assert r.output == "one: 2 tools\n"
    assert (stored_tools(app, "one"), stored_tools(app, "two")) == (["x", "added"], ["x"])  # only that one
    with app.app_context():
        event = db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.actor, event.detail) == (
            "mcp_server.refresh_tools", "cli", "tools=2, added=1, removed=0")

    # every enabled server; a per-user server is skipped; an unreachable one fails the command
    with app.app_context():
        db.session.scalar(db.select(McpServer).filter_by(name="one")).url = f"http://127.0.0.1:{free_port()}/mcp"
        db.session.commit()
    r = runner.invoke(args=["refresh-tools"])
    assert r.exit_code == 1, r.output
    assert "mine: skipped (per_user_headers tools come with members' credentials)" in r.output
    assert "two: 2 tools" in r.output and "off" not in r.output
    assert r.stderr == "one: cannot discover the server's tools: one: the server is unreachable\n"
    assert (stored_tools(app, "two"), stored_tools(app, "off"), stored_tools(app, "one")) == (
        ["x", "added"], ["x"], ["x", "added"])  # the failed one keeps its stored list
