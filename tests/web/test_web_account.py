"""Logging in and the account page: the password-change page (clears the one-time flag, ends
every other login, keeps this one), where a login may lead next, what a refused login leaves in
the audit log, and that its timing does not tell known e-mails from unknown ones."""
from __future__ import annotations

import re
import statistics
import time

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Login, User
from tests.conftest import PASSWORD, Api, make_user, token_for
from tests.support.api import CheckedApi, assert_error, mint
from tests.support.web import Web, csrf_in

NEW_PASSWORD = "a completely new password"


def change_password(web: Web, current: str, new: str, confirm: str | None = None):
    form = web.client.get("/account/password")
    assert form.status_code == 200
    return web.client.post("/account/password", data={
        "current_password": current, "new_password": new,
        "confirm_password": new if confirm is None else confirm, "csrf_token": csrf_in(form.get_data(as_text=True))})


def logged_in(web: Web) -> bool:
    r = web.client.get("/keys")
    assert r.status_code == 200 or (r.status_code == 302 and "/login" in r.headers["Location"])
    return r.status_code == 200


# --- the password-change page -------------------------------------------------------------

def test_password_change_keeps_this_login_and_ends_every_other(app, member_id):
    here = Web(app.test_client()).login("member@example.com")
    elsewhere = Web(app.test_client()).login("member@example.com")
    token = mint(app, app.test_client(), "member@example.com")
    bystander = make_user(app, "other@example.com")
    their_token = CheckedApi(Api(app.test_client(), token_for(app, bystander)))
    assert logged_in(elsewhere) and token.get("/virtual-keys").status_code == 200

    r = change_password(here, PASSWORD, NEW_PASSWORD)
    assert r.status_code == 302
    assert logged_in(here)  # this session stays
    assert not logged_in(elsewhere)  # the other one ended
    assert_error(token.get("/virtual-keys"), 401, "unauthorized")  # so did the API token
    assert their_token.get("/virtual-keys").status_code == 200  # nobody else's
    with app.app_context():
        user = db.session.get(User, member_id)
        assert user.check_password(NEW_PASSWORD) and not user.check_password(PASSWORD)
        live = db.session.scalars(select(Login).where(Login.user_id == member_id,
                                                                 Login.revoked_at.is_(None))).all()
        assert len(live) == 1
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.actor) == ("user.password_change", "member@example.com")
        assert NEW_PASSWORD not in event.detail and PASSWORD not in event.detail
    assert Web(app.test_client()).login("member@example.com", NEW_PASSWORD)


def test_password_change_clears_the_one_time_flag(app, client, monkeypatch):
    monkeypatch.delenv("PORTCULLIS_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("PORTCULLIS_ADMIN_PASSWORD", raising=False)
    one_time = re.search(r"password: (\S+)", app.test_cli_runner().invoke(args=["ensure-admin"]).output).group(1)
    web = Web(client)
    r = client.post("/login", data={"email": "admin@localhost", "password": one_time,
                                    "csrf_token": csrf_in(client.get("/login").get_data(as_text=True))})
    assert r.headers["Location"].endswith("/account/password")
    assert client.get("/servers").headers["Location"].endswith("/account/password")
    assert "one-time password" in client.get("/account/password").get_data(as_text=True)
    assert change_password(web, one_time, NEW_PASSWORD).status_code == 302
    with app.app_context():
        assert db.session.scalar(select(User.must_change_password)) is False
    assert client.get("/servers").status_code == 200  # the pages are open now, in the same session
    assert mint(app, client, "admin@localhost", NEW_PASSWORD).get("/users").status_code == 200


@pytest.mark.parametrize("current,new,confirm,field", [
    ("wrong current password", NEW_PASSWORD, None, "This is not your current password."),
    (PASSWORD, "short", None, "at least 10"),
    (PASSWORD, PASSWORD, None, "different from the current one"),
    (PASSWORD, NEW_PASSWORD, "another new password", "The two passwords differ."),
])
def test_password_change_refused_changes_nothing(app, member_id, current, new, confirm, field):
    here = Web(app.test_client()).login("member@example.com")
    elsewhere = Web(app.test_client()).login("member@example.com")
    token = mint(app, app.test_client(), "member@example.com")
    r = change_password(here, current, new, confirm)
    assert r.status_code == 422 and field in r.get_data(as_text=True)
    assert logged_in(here) and logged_in(elsewhere) and token.get("/virtual-keys").status_code == 200
    with app.app_context():
        assert db.session.get(User, member_id).check_password(PASSWORD)


# --- where a login leads next ---------------------------------------------------------------

BAD_NEXT = ["/%0d%0aSet-Cookie:x=1", "/%0aLocation:%20https://evil.example", "/ok%09tab", "/%7f",
            "/%5Cevil.example", "/%5C%5Cevil.example", "//evil.example", "https://evil.example/", "evil",
            "/%E2%80%A8line-separator", "//[", "/%00"]


@pytest.mark.parametrize("target", BAD_NEXT)
def test_a_bad_next_target_leads_to_the_index(client, admin_id, target):
    page = client.get(f"/login?next={target}")
    assert page.status_code == 200
    r = client.post(f"/login?next={target}", data={"email": "admin@example.com", "password": PASSWORD,
                                                    "csrf_token": csrf_in(page.get_data(as_text=True))})
    assert (r.status_code, r.headers["Location"]) == (302, "/")
    # already logged in: the login page sends you on, to the same safe place
    r = client.get(f"/login?next={target}")
    assert (r.status_code, r.headers["Location"]) == (302, "/")


def test_a_local_next_target_is_kept(client, admin_id):
    page = client.get("/login?next=/sessions%3Fstatus%3Dactive")
    r = client.post("/login?next=/sessions%3Fstatus%3Dactive", data={
        "email": "admin@example.com", "password": PASSWORD, "csrf_token": csrf_in(page.get_data(as_text=True))})
    assert r.headers["Location"] == "/sessions?status=active"


# --- what a refused login leaves in the audit log --------------------------------------------

def _web_login(client, email, password):
    csrf = csrf_in(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})
    assert r.status_code == 401
    return "login.failure"


def _api_login(client, email, password):
    r = client.post("/api/v1/tokens", json={"email": email, "password": password})
    assert r.status_code == 401
    return "token.denied"


def _last_event(app) -> AuditEvent:
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        db.session.expunge(event)
        return event


@pytest.mark.parametrize("attempt", [_web_login, _api_login])
def test_refused_logins_keep_only_known_addresses(app, client, member_id, attempt):
    typed = "Hunter2-my-real-password"  # a password typed into the e-mail field
    action = attempt(client, typed, "whatever")
    unknown = _last_event(app)
    assert unknown.action == action
    assert typed.lower() not in unknown.target.lower() and typed.lower() not in unknown.detail.lower()
    assert unknown.target.startswith("unknown e-mail #") and unknown.target_id is None
    # the same text again gives the same mark (repeated attempts stay visible), other text another
    attempt(client, typed, "again")
    assert _last_event(app).target == unknown.target
    attempt(client, "someone-else@example.com", "x")
    assert _last_event(app).target not in (unknown.target, "someone-else@example.com")
    # a known address is kept, linked to its user: a wrong password, and an inactive user alike
    attempt(client, "Member@Example.com", "wrong password")
    known = _last_event(app)
    assert (known.target, known.target_type, known.target_id) == ("member@example.com", "users", member_id)
    make_user(app, "inactive@example.com", active=False)
    attempt(client, "inactive@example.com", PASSWORD)
    assert _last_event(app).target == "inactive@example.com"


# --- timing ----------------------------------------------------------------------------------

def _median_seconds_each(attempts: dict, rounds: int = 5) -> dict[str, float]:
    """Each attempt ``rounds`` times, interleaved, after one warm-up round: the median of each."""
    times = {name: [] for name in attempts}
    for i in range(rounds + 1):
        for name, attempt in attempts.items():
            start = time.perf_counter()
            attempt()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@pytest.mark.parametrize("attempt", [_web_login, _api_login])
def test_login_timing_does_not_tell_known_emails(app, client, member_id, attempt):
    """A known address with a wrong password, an inactive user and an unknown address each
    verify one password hash of the same cost: their medians stay within a factor of 3 (the old
    code answered unknown and inactive ones about 20 times faster)."""
    make_user(app, "inactive@example.com", active=False)
    medians = _median_seconds_each({
        "known": lambda: attempt(client, "member@example.com", "wrong password"),
        "inactive": lambda: attempt(client, "inactive@example.com", PASSWORD),
        "unknown": lambda: attempt(client, "nobody@example.com", "wrong password"),
    })
    assert max(medians.values()) < 3 * min(medians.values()), medians
