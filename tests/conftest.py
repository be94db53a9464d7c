"""Shared fixtures: one app per test session on a real database (SQLite file by default,
PostgreSQL when TEST_DATABASE_URL is set), schema built by the real migrations, every table
emptied after each test."""
from __future__ import annotations

import os
import re
import threading

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app import create_app
from app.extensions import db, limiter
from app.models import ApiToken, User

pytest.register_assert_rewrite("tests.support")  # failed asserts in the helpers explain themselves too
pytest_plugins = ["tests.support.mcp", "tests.support.proxy", "tests.support.oidc_provider"]  # their fixtures, for every test

PASSWORD = "correct horse battery"
_SIGNING: dict = {}  # one RSA key for the whole session (making one takes a while), re-stored after each test


def _signing_key(app) -> None:
    """What `flask setup` does before the server starts: a key that signs access tokens."""
    from app.models import SigningKey
    from app.oauth_server import keys

    if not _SIGNING:
        key = keys.generate()
        _SIGNING.update(kid=key.kid, private_pem=key.private_pem, public_jwk=key.public_jwk)
    db.session.add(SigningKey(**_SIGNING))
    db.session.commit()
    app.extensions["signing_keys"].invalidate()


def _database_url(tmp_path_factory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return "sqlite:///" + str(tmp_path_factory.mktemp("db") / "test.db")


def reset_schema(app) -> None:
    """Drop everything, then build the schema with the real migrations."""
    from flask_migrate import upgrade

    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
        else:
            db.drop_all()
            with db.engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        upgrade()
        _signing_key(app)


@pytest.fixture(scope="session")
def encryption_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def app(tmp_path_factory, encryption_key):
    instance = tmp_path_factory.mktemp("instance")
    app = create_app({
        "INSTANCE_PATH": str(instance),
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-not-for-production",
        "PORTCULLIS_ENCRYPTION_KEY": encryption_key,
        "DATABASE_URL": _database_url(tmp_path_factory),
        "PORTCULLIS_LOGIN_RATE_LIMIT": "1000 per minute",
    })
    reset_schema(app)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(autouse=True)
def _clean_tables(app):
    yield
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())
        _signing_key(app)  # (encrypted anew: a test may have rotated the encryption key)
    limiter.reset()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


def make_user(app, email: str, role: str = "member", password: str = PASSWORD, active: bool = True) -> int:
    with app.app_context():
        user = User(email=email, role=role, active=active)
        user.set_password(password)
        db.session.add(user)
        db.session.commit()
        return user.id


def token_for(app, user_id: int) -> str:
    with app.app_context():
        row, token = ApiToken.issue(db.session.get(User, user_id), 1)
        db.session.add(row)
        db.session.commit()
        return token


class Api:
    """A test client that speaks to /api/v1 with a bearer token."""

    def __init__(self, client, token: str | None):
        self.client, self.token = client, token

    def _headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path, **kw):
        return self.client.get("/api/v1" + path, headers=self._headers(), **kw)

    def delete(self, path, **kw):
        return self.client.delete("/api/v1" + path, headers=self._headers(), **kw)

    def post(self, path, json=None, **kw):
        return self.client.post("/api/v1" + path, json=json, headers=self._headers(), **kw)

    def patch(self, path, json=None, **kw):
        return self.client.patch("/api/v1" + path, json=json, headers=self._headers(), **kw)

    def put(self, path, json=None, **kw):
        return self.client.put("/api/v1" + path, json=json, headers=self._headers(), **kw)


@pytest.fixture
def admin_id(app) -> int:
    return make_user(app, "admin@example.com", "admin")


@pytest.fixture
def member_id(app) -> int:
    return make_user(app, "member@example.com", "member")


@pytest.fixture
def admin_api(app, client, admin_id) -> Api:
    return Api(client, token_for(app, admin_id))


@pytest.fixture
def member_api(app, client, member_id) -> Api:
    return Api(client, token_for(app, member_id))


@pytest.fixture
def anon_api(client) -> Api:
    return Api(client, None)


@pytest.fixture(scope="session")
def live_server(app):
    """The app served over real HTTP on a free loopback port (for the browser tests)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright never downloads a browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per browser test module (Playwright's sync API keeps an event loop
    of its own: not left running beside the modules that use asyncio)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class BrowserProblems:
    """What went wrong in a test's pages: console errors (htmx's own errors, failed loads, CSP
    violations, which Chromium reports there) and uncaught script errors."""

    def __init__(self):
        self.seen: list[str] = []
        self.expected: list[re.Pattern] = []

    def expect(self, pattern: str) -> None:
        """A console error this test causes on purpose (say, a 422 answer): matching ones are allowed."""
        self.expected.append(re.compile(pattern))

    def console(self, message) -> None:
        if message.type == "error":
            self.seen.append(f"console error: {message.text} ({message.location.get('url')})")

    def web_error(self, error) -> None:
        self.seen.append(f"uncaught error: {error.error}")

    def unexpected(self) -> list[str]:
        return [p for p in self.seen if not any(e.search(p) for e in self.expected)]


@pytest.fixture
def browser_problems() -> BrowserProblems:
    return BrowserProblems()


@pytest.fixture
def browser_context(browser, browser_problems):
    """Opens browser contexts (the arguments of Browser.new_context) for one test and closes them
    after it; the test fails on any console error or uncaught script error in their pages, CSP
    violations included (unless announced with browser_problems.expect)."""
    contexts = []

    def new_context(**kwargs):
        context = browser.new_context(**kwargs)
        context.on("console", browser_problems.console)
        context.on("weberror", browser_problems.web_error)
        contexts.append(context)
        return context

    yield new_context
    for context in contexts:
        context.close()
    problems = browser_problems.unexpected()
    assert not problems, "the browser reported:\n" + "\n".join(problems)
