"""Single sign-on against a real OpenID provider (npm `oidc-provider` on Node 22, see
tests/support/oidc_provider.py): who may sign in, as which account and role, what is refused
(other domains, unverified e-mail, deactivated accounts, tampered state / nonce / issuer), and
PORTCULLIS_PASSWORD_LOGIN=false. The dashboard runs in-process (Flask test client) with the
headless httpx browser at the provider; one test drives real Chromium through both."""
from __future__ import annotations

import os
from unittest import mock
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from sqlalchemy import select

from app import create_app
from app.config import load_config
from app.extensions import db
from app.models import AuditEvent, Login, User
from tests.conftest import PASSWORD, make_user
from tests.support.mcp import free_port
from tests.support.oidc_provider import HttpxBrowser, static_client
from tests.support.web import csrf_in

CALLBACK = "/login/sso/callback"
SECRET = "sso-client-secret-5d1c"


class Later:
    """A WSGI app that is chosen after its server is listening (its port goes into the settings)."""
    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


@pytest.fixture(scope="module")
def live():
    """A real HTTP server on a free port, bound before anything needs its URL (Chromium's test
    uses it; the test client's requests name the same base URL)."""
    import threading

    from werkzeug.serving import make_server

    later = Later()
    server = make_server("127.0.0.1", 0, later, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    later.base = f"http://127.0.0.1:{server.server_port}"
    yield later
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def provider(oidc_provider_factory, live):
    return oidc_provider_factory(clients=[static_client("portcullis", secret=SECRET,
                                                       redirect_uris=[live.base + CALLBACK])])


def _make_app(app, encryption_key, tmp_path_factory, provider, base, **env):
    """An app on the suite's database (emptied after each test) with single sign-on configured
    through the environment, as in production (overrides would skip the settings' parsing)."""
    settings = {
        "INSTANCE_PATH": str(tmp_path_factory.mktemp("sso-instance")),
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-not-for-production",
        "PORTCULLIS_ENCRYPTION_KEY": encryption_key,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "PORTCULLIS_LOGIN_RATE_LIMIT": "1000 per minute",
        "PORTCULLIS_BASE_URL": base,
    }
    environment = {
        "PORTCULLIS_OIDC_ISSUER": provider.issuer,
        "PORTCULLIS_OIDC_CLIENT_ID": "portcullis",
        "PORTCULLIS_OIDC_CLIENT_SECRET": SECRET,
        "PORTCULLIS_OIDC_ALLOWED_DOMAINS": "example.com, Example.ORG",
        "PORTCULLIS_OIDC_ADMIN_GROUPS": "admins,platform",
        "PORTCULLIS_OIDC_PROVIDER_NAME": "Test IdP",
        **env,
    }
    with mock.patch.dict(os.environ, environment):
        return create_app(settings)


@pytest.fixture(scope="module")
def sso_app(app, encryption_key, tmp_path_factory, provider, live):
    sso = _make_app(app, encryption_key, tmp_path_factory, provider, live.base)
    live.target = sso
    yield sso
    with sso.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def no_password_app(app, encryption_key, tmp_path_factory, provider, live):
    sso = _make_app(app, encryption_key, tmp_path_factory, provider, live.base, PORTCULLIS_PASSWORD_LOGIN="false")
    yield sso
    with sso.app_context():
        db.engine.dispose()


def _with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def sso_login(client, login: str, *, next_path: str | None = None, tamper_auth=None, tamper_callback=None):
    """Start at /login/sso, let ``login`` sign in at the provider, deliver the callback; the
    dashboard's answer to the callback."""
    callback = client.application.config["PORTCULLIS_BASE_URL"] + CALLBACK
    start = client.get("/login/sso" + (f"?next={next_path}" if next_path else ""))
    assert start.status_code == 302, start.get_data(as_text=True)
    url = start.headers["Location"]
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["code_challenge_method"] == "S256" and q["code_challenge"] and q["nonce"] and q["state"]
    assert q["redirect_uri"] == callback and "openid" in q["scope"].split()
    if tamper_auth:
        url = tamper_auth(url)
    result = HttpxBrowser(login).authorize(url, stop_at=callback)
    assert result.code, result.params
    back = result.url
    if tamper_callback:
        back = tamper_callback(back)
    parts = urlsplit(back)
    return client.get(f"{parts.path}?{parts.query}")


def _user(sso_app, email):
    with sso_app.app_context():
        return db.session.scalar(select(User).where(User.email == email))


def _events(sso_app, action):
    with sso_app.app_context():
        return db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()


def _logins(sso_app):
    with sso_app.app_context():
        return db.session.scalars(select(Login)).all()


def test_first_sign_in_makes_a_member_with_a_login(sso_app, provider):
    client = sso_app.test_client()
    r = sso_login(client, "bob@example.com", next_path="/sessions")
    assert r.status_code == 302 and r.headers["Location"] == "/sessions"
    bob = _user(sso_app, "bob@example.com")
    assert bob.role == "member" and bob.active and bob.sso_issuer == provider.issuer
    assert bob.sso_subject == "bob@example.com"
    assert [e.target for e in _events(sso_app, "login.sso")] == ["bob@example.com"]
    assert "first single sign-on" in _events(sso_app, "user.create")[0].detail
    [login] = _logins(sso_app)
    assert login.user_id == bob.id and login.revoked_at is None
    page = client.get("/keys")
    assert page.status_code == 200 and "bob@example.com" in page.get_data(as_text=True)
    # logging out ends that Login as for a password login
    r = client.post("/logout", data={"csrf_token": csrf_in(page.get_data(as_text=True))})
    assert r.status_code == 302 and _logins(sso_app)[0].revoked_at is not None
    assert client.get("/keys").status_code == 302
    # the second sign-in is the same account (tied by the provider's subject), no new user
    assert sso_login(client, "bob@example.com").status_code == 302
    with sso_app.app_context():
        assert db.session.scalar(select(db.func.count(User.id))) == 1


def test_admin_group_makes_an_admin_and_leaving_it_demotes_at_next_sign_in(sso_app, provider):
    make_user(sso_app, "other-admin@example.com", "admin")
    alice_browser = sso_app.test_client()
    assert sso_login(alice_browser, "alice@example.com").status_code == 302
    assert _user(sso_app, "alice@example.com").role == "admin"
    assert alice_browser.get("/servers").status_code == 200  # an admin page
    with provider.accounts_changed({"alice@example.com": {"name": "Alice", "groups": ["staff"]}}):
        # until she signs in again, her login keeps the role the provider gave last time
        assert alice_browser.get("/servers").status_code == 200
        other_browser = sso_app.test_client()
        assert sso_login(other_browser, "alice@example.com").status_code == 302
    alice = _user(sso_app, "alice@example.com")
    assert alice.role == "member"
    assert [e.detail for e in _events(sso_app, "user.role_change")] == ["admin -> member (identity provider groups)"]
    # as for any role change, her earlier logins ended; the new one is a member's
    assert alice_browser.get("/servers").status_code == 302
    assert other_browser.get("/servers").status_code == 403
    assert other_browser.get("/keys").status_code == 200
    assert sso_login(sso_app.test_client(), "alice@example.com").status_code == 302  # back in the group
    assert _user(sso_app, "alice@example.com").role == "admin"


def test_the_last_active_admin_is_not_demoted_by_the_groups(sso_app, provider):
    client = sso_app.test_client()
    assert sso_login(client, "alice@example.com").status_code == 302
    with provider.accounts_changed({"alice@example.com": {"groups": []}}):
        assert sso_login(sso_app.test_client(), "alice@example.com").status_code == 302
    assert _user(sso_app, "alice@example.com").role == "admin"
    assert _events(sso_app, "user.role_change_refused")


@pytest.mark.parametrize("login, reason", [("mallory@evil.test", "domain_not_allowed"),
                                           ("unverified@example.com", "email_unverified")])
def test_refused_domain_and_unverified_email(sso_app, login, reason):
    client = sso_app.test_client()
    r = sso_login(client, login)
    assert r.status_code == 403
    page = r.get_data(as_text=True)
    assert ("domain may not sign in" in page) if reason == "domain_not_allowed" else ("not verified" in page)
    assert _user(sso_app, login) is None and not _logins(sso_app)
    [event] = _events(sso_app, "login.sso_refused")
    assert event.detail == reason and login not in event.target  # an outsider's address is not stored
    assert client.get("/keys").status_code == 302


def test_deactivated_user_cannot_sign_in(sso_app):
    make_user(sso_app, "bob@example.com", active=False)
    r = sso_login(sso_app.test_client(), "bob@example.com")
    assert r.status_code == 403 and "deactivated" in r.get_data(as_text=True)
    assert not _logins(sso_app)
    [event] = _events(sso_app, "login.sso_refused")
    assert event.detail == "deactivated" and event.target == "bob@example.com"
    # already tied to the provider, then deactivated: refused too
    with sso_app.app_context():
        bob = db.session.scalar(select(User).where(User.email == "bob@example.com"))
        bob.active = True
        db.session.commit()
    assert sso_login(sso_app.test_client(), "bob@example.com").status_code == 302
    with sso_app.app_context():
        db.session.scalar(select(User).where(User.email == "bob@example.com")).active = False
        db.session.commit()
    assert sso_login(sso_app.test_client(), "bob@example.com").status_code == 403


def test_existing_account_is_taken_over_by_verified_email_once(sso_app, provider):
    bob_id = make_user(sso_app, "bob@example.com")
    assert sso_login(sso_app.test_client(), "bob@example.com").status_code == 302
    bob = _user(sso_app, "bob@example.com")
    assert bob.id == bob_id and bob.sso_subject == "bob@example.com"
    assert _events(sso_app, "user.sso_link")
    # password login still works for that account (PORTCULLIS_PASSWORD_LOGIN is on)
    client = sso_app.test_client()
    token = csrf_in(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": "bob@example.com", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302
    # another person at the provider claiming the same (verified) address does not get it
    with provider.accounts_changed({"impostor": {"sub": "impostor-1", "email": "bob@example.com"}}):
        r = sso_login(sso_app.test_client(), "impostor")
    assert r.status_code == 403
    assert [e.detail for e in _events(sso_app, "login.sso_refused")] == ["account_tied_elsewhere"]
    assert len(_logins(sso_app)) == 2


def test_a_one_time_password_stops_working_once_the_admin_signs_in_through_sso(sso_app):
    with sso_app.app_context():
        user = User(email="alice@example.com", role="admin", must_change_password=True)
        user.set_password("printed-one-time-1")
        db.session.add(user)
        db.session.commit()
    client = sso_app.test_client()
    r = sso_login(client, "alice@example.com")
    assert r.status_code == 302 and r.headers["Location"] == "/"
    alice = _user(sso_app, "alice@example.com")
    assert not alice.must_change_password and not alice.check_password("printed-one-time-1")
    assert client.get("/servers").status_code == 200  # not sent to the password change page


def test_tampered_state_is_refused(sso_app):
    client = sso_app.test_client()
    r = sso_login(client, "bob@example.com", tamper_callback=lambda u: _with_query(u, state="forged"))
    assert r.status_code == 400 and "did not complete" in r.get_data(as_text=True)
    assert _user(sso_app, "bob@example.com") is None and not _logins(sso_app)
    assert "invalid answer" in _events(sso_app, "login.sso_refused")[0].detail
    # a callback delivered to a browser that never started the sign-in (login CSRF) is refused
    other = sso_app.test_client()
    captured = {}

    def keep(u):
        captured["url"] = u
        return _with_query(u, state="x")  # spend nothing in the first browser

    sso_login(client, "bob@example.com", tamper_callback=keep)
    parts = urlsplit(captured["url"])
    assert other.get(f"{parts.path}?{parts.query}").status_code == 400
    assert not _logins(sso_app)


def test_replayed_callback_is_refused(sso_app):
    client = sso_app.test_client()
    captured = {}

    def keep(u):
        captured["url"] = u
        return u

    assert sso_login(client, "bob@example.com", tamper_callback=keep).status_code == 302
    parts = urlsplit(captured["url"])
    assert client.get(f"{parts.path}?{parts.query}").status_code == 400
    assert len(_logins(sso_app)) == 1


def test_tampered_nonce_is_refused(sso_app):
    # The provider puts the nonce it was sent into the ID token; one that differs from what
    # this browser's sign-in started with must fail Authlib's ID-token check.
    r = sso_login(sso_app.test_client(), "bob@example.com", tamper_auth=lambda u: _with_query(u, nonce="attacker"))
    assert r.status_code == 400
    assert _user(sso_app, "bob@example.com") is None and not _logins(sso_app)


def test_another_issuer_in_the_answer_is_refused(sso_app):
    r = sso_login(sso_app.test_client(), "bob@example.com",
                  tamper_callback=lambda u: _with_query(u, iss="https://evil.example"))
    assert r.status_code == 403 and not _logins(sso_app)
    assert [e.detail for e in _events(sso_app, "login.sso_refused")] == ["issuer_mismatch"]


def test_login_page_shows_the_button(sso_app, client):
    page = sso_app.test_client().get("/login?next=/keys").get_data(as_text=True)
    assert "Sign in with Test IdP" in page and 'href="/login/sso?next=/keys"' in page
    assert 'name="password"' in page
    # without single sign-on configured: no button, and /login/sso does not exist
    assert "Sign in with" not in client.get("/login").get_data(as_text=True)
    assert client.get("/login/sso").status_code == 404


def test_password_login_off(no_password_app):
    make_user(no_password_app, "bob@example.com")
    client = no_password_app.test_client()
    page = client.get("/login").get_data(as_text=True)
    assert "Sign in with Test IdP" in page and 'name="password"' not in page
    # (the page has no form, hence no CSRF token: the check is made without one, as a script would)
    no_password_app.config["WTF_CSRF_ENABLED"] = False
    try:
        r = client.post("/login", data={"email": "bob@example.com", "password": PASSWORD})
    finally:
        no_password_app.config["WTF_CSRF_ENABLED"] = True
    assert r.status_code == 403 and "Password login is turned off" in r.get_data(as_text=True)
    assert not _logins(no_password_app)
    r = client.post("/api/v1/tokens", json={"email": "bob@example.com", "password": PASSWORD})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "password_login_disabled"
    # single sign-on works, into the existing account
    assert sso_login(client, "bob@example.com").status_code == 302
    assert client.get("/keys").status_code == 200


def test_first_admin_when_password_login_is_off(no_password_app):
    out = no_password_app.test_cli_runner().invoke(args=["ensure-admin"], env={"PORTCULLIS_ADMIN_EMAIL": "alice@example.com"})
    assert out.exit_code == 0, out.output
    assert "Password login is off" in out.output and "password:" not in out.output
    assert "alice@example.com" in out.output
    admin = _user(no_password_app, "alice@example.com")
    assert admin.role == "admin" and admin.sso_subject is None
    # the first SSO sign-in with that verified address ties the admin account to that person
    client = no_password_app.test_client()
    assert sso_login(client, "alice@example.com").status_code == 302
    assert client.get("/servers").status_code == 200
    out = no_password_app.test_cli_runner().invoke(args=["ensure-admin"], env={"PORTCULLIS_ADMIN_EMAIL": "root@localhost"})
    assert "Password login is off" in out.output


@pytest.mark.parametrize("env, message", [
    ({"PORTCULLIS_PASSWORD_LOGIN": "false"}, "PORTCULLIS_PASSWORD_LOGIN=false needs single sign-on"),
    ({"PORTCULLIS_OIDC_ISSUER": "https://id.example.com", "PORTCULLIS_OIDC_CLIENT_ID": "x"},
     "PORTCULLIS_OIDC_ALLOWED_DOMAINS"),
    ({"PORTCULLIS_OIDC_ISSUER": "https://id.example.com", "PORTCULLIS_OIDC_ALLOWED_DOMAINS": "example.com"},
     "PORTCULLIS_OIDC_CLIENT_ID"),
    ({"PORTCULLIS_OIDC_ISSUER": "http://id.example.com", "PORTCULLIS_OIDC_CLIENT_ID": "x",
      "PORTCULLIS_OIDC_ALLOWED_DOMAINS": "example.com"}, "https"),
    ({"PORTCULLIS_OIDC_ISSUER": "https://id.example.com", "PORTCULLIS_OIDC_CLIENT_ID": "x",
      "PORTCULLIS_OIDC_ALLOWED_DOMAINS": "exa mple.com"}, "PORTCULLIS_OIDC_ALLOWED_DOMAINS"),
])
def test_half_done_settings_stop_the_start(tmp_path, env, message):
    base = {"SECRET_KEY": "k", "PORTCULLIS_ENCRYPTION_KEY": "x" * 44}
    with pytest.raises(RuntimeError, match=message):
        load_config(str(tmp_path), {**base, **env})


def test_provider_down_gives_a_clear_page(app, encryption_key, tmp_path_factory, live):
    class Gone:
        issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    down = _make_app(app, encryption_key, tmp_path_factory, Gone, live.base)
    r = down.test_client().get("/login/sso")
    assert r.status_code == 502 and "cannot be reached" in r.get_data(as_text=True)
    with down.app_context():
        db.engine.dispose()


def test_claims_only_in_userinfo(app, encryption_key, tmp_path_factory, oidc_provider_factory, live):
    """A provider that keeps e-mail and groups out of the ID token (OpenID's strict reading):
    they come from its userinfo endpoint, for the same subject."""
    strict = oidc_provider_factory(clients=[static_client("portcullis", secret=SECRET,
                                                         redirect_uris=[live.base + CALLBACK])],
                                   claims_in_id_token=False)
    strict_app = _make_app(app, encryption_key, tmp_path_factory, strict, live.base)
    try:
        assert sso_login(strict_app.test_client(), "alice@example.com").status_code == 302
        assert _user(strict_app, "alice@example.com").role == "admin"
        assert sso_login(strict_app.test_client(), "unverified@example.com").status_code == 403
    finally:
        with strict_app.app_context():
            db.engine.dispose()


def test_chromium_signs_in_with_the_button(live, sso_app, browser_context):
    sso_live = live.base
    page = browser_context().new_page()
    page.goto(sso_live + "/login?next=/sessions")
    page.click("#sso")
    page.fill("#login", "alice@example.com")
    page.click("#sign-in")
    page.click("#confirm")
    page.wait_for_url(sso_live + "/sessions", timeout=15000)
    assert "alice@example.com" in page.content()
    assert _user(sso_app, "alice@example.com").role == "admin"
    # her dashboard login holds (an admin page, as the provider's groups say)
    page.goto(sso_live + "/servers")
    assert page.url == sso_live + "/servers"
