"""/healthz, /readyz, /metrics' token and request ids, answered in front of Flask."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from app.extensions import db
from app.models import AuditEvent
from tests.support.mcp import free_port


def test_healthz_answers_without_login_or_cookie(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert "Set-Cookie" not in r.headers
    assert len(r.headers["X-Request-Id"]) == 32


def test_readyz_ready(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json == {"status": "ready", "checks": {"database": "ok", "migrations": "ok", "redis": "not_configured"}}
    assert "Set-Cookie" not in r.headers
    assert client.post("/readyz").status_code == 405


def test_readyz_names_migrations_that_are_not_current(app, client):
    with app.app_context():
        with db.engine.begin() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json["failing"] == ["migrations"] and r.json["checks"]["database"] == "ok"
    finally:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current})
    assert client.get("/readyz").status_code == 200


@pytest.fixture
def unreachable_redis(app):
    readiness = app.wsgi_app.readiness
    password = "redis-password-canary-5e1"
    saved = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = f"redis://:{password}@127.0.0.1:{free_port()}/0"  # nothing listens there
    readiness._redis = None
    yield password
    app.config["REDIS_URL"] = saved
    readiness._redis = None


def test_readyz_names_unreachable_redis_without_its_url(client, unreachable_redis):
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json == {"status": "unavailable", "failing": ["redis"],
                      "checks": {"database": "ok", "migrations": "ok", "redis": "unreachable"}}
    assert unreachable_redis not in r.get_data(as_text=True) and "127.0.0.1" not in r.get_data(as_text=True)


def test_readyz_names_unreachable_database_without_its_url(app, client, monkeypatch):
    from sqlalchemy import create_engine

    password = "db-password-canary-77e"
    dead = create_engine(f"postgresql+psycopg://u:{password}@127.0.0.1:{free_port()}/x",
                         connect_args={"connect_timeout": 2})
    monkeypatch.setattr(type(db), "engine", property(lambda self: dead))
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json["failing"] == ["database", "migrations"]
    assert r.json["checks"]["database"] == "unreachable"
    assert password not in r.get_data(as_text=True)


def test_metrics_token(app, client):
    assert client.get("/metrics").status_code == 200  # no token configured: open
    app.wsgi_app.token = b"metrics-token-9f"
    try:
        r = client.get("/metrics")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-9f"})
        assert r.status_code == 200 and b"portcullis_tool_calls_total" in r.data
    finally:
        app.wsgi_app.token = b""


def test_request_id_is_generated_unless_a_trusted_proxy_sent_one(app, client):
    r = client.get("/login", headers={"X-Request-Id": "from-the-client"})
    assert r.headers["X-Request-Id"] != "from-the-client"  # no trusted proxy configured
    app.wsgi_app.trusted = True
    try:
        r = client.get("/login", headers={"X-Request-Id": "nginx-1234"})
        assert r.headers["X-Request-Id"] == "nginx-1234"
        assert r.headers.getlist("X-Request-Id") == ["nginx-1234"]
        bad = client.get("/login", headers={"X-Request-Id": "a b\x7f" + "x" * 200})
        assert len(bad.headers["X-Request-Id"]) == 32  # not sane: replaced
        r = client.get("/proxy/nothing", headers={"X-Request-Id": "nginx-5678"})
        assert r.headers["X-Request-Id"] == "nginx-5678"
    finally:
        app.wsgi_app.trusted = False


def test_audit_events_name_the_request(app, client, admin_api):
    r = admin_api.post("/users", json={"email": "rid@example.com", "password": "long enough pw", "role": "member"})
    assert r.status_code == 201, r.json
    rid = r.headers["X-Request-Id"]
    with app.app_context():
        event = db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "user.create"))
        assert event.request_id == rid
    listed = admin_api.get("/audit-events").json
    assert any(e["request_id"] == rid for e in listed["audit_events"])


def test_readyz_answers_when_the_database_goes_silent(app, client, monkeypatch):
    """A database host that accepts the connection and then says nothing (a silent network, a
    hung server): the configured engine gives up within seconds, so /readyz answers 503."""
    import socket
    import time

    from sqlalchemy import create_engine

    from app.config import engine_options

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever answers
    try:
        url = f"postgresql+psycopg://u@127.0.0.1:{silent.getsockname()[1]}/x"
        dead = create_engine(url, **engine_options(url))
        monkeypatch.setattr(type(db), "engine", property(lambda self: dead))
        started = time.monotonic()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json["checks"]["database"] == "unreachable"
        assert time.monotonic() - started < 15
    finally:
        silent.close()
