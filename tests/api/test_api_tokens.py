"""Personal API tokens end exactly when their user's dashboard logins end (password change or
reset, deactivation, role change, deletion; on every path: API, pages, CLI); GET and DELETE
/api/v1/tokens; a user who must change a one-time password gets 403 password_change_required
from the whole API until they have."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import ApiToken, AuditEvent, Login, User
from tests.conftest import Api, make_user, token_for
from tests.support.api import admin_api, member_api  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.api import PUBLIC, CheckedApi, api_rules, assert_error, audit_actions, check_against_doc, count, mint
from tests.support.web import Web, csrf_in

NEW_PASSWORD = "a completely new password"


class Person:
    """One user with both kinds of login: an API token and a dashboard session."""

    def __init__(self, app, email: str, role: str = "member"):
        self.id = make_user(app, email, role)
        self.email = email
        self.api = mint(app, app.test_client(), email)
        self.web = Web(app.test_client()).login(email)

    def token_works(self) -> bool:
        r = self.api.get("/virtual-keys")
        assert r.status_code in (200, 401), r.get_json()
        return r.status_code == 200

    def dashboard_works(self) -> bool:
        r = self.web.get("/keys")
        assert r.status_code == 200 or (r.status_code == 302 and "/login" in r.headers["Location"])
        return r.status_code == 200


@pytest.fixture
def victim(app):
    return Person(app, "victim@example.com")


@pytest.fixture
def bystander(app):
    return Person(app, "bystander@example.com")


@pytest.fixture
def admin_web(client, admin_id) -> Web:
    return Web(client).login("admin@example.com")


def _api_password(app, admin_api, admin_web, victim):
    assert admin_api.patch(f"/users/{victim.id}", json={"password": NEW_PASSWORD}).status_code == 200


def _api_reactivated(app, admin_api, admin_web, victim):
    """Deactivated and activated again: what ended stays ended."""
    assert admin_api.patch(f"/users/{victim.id}", json={"active": False}).status_code == 200
    assert admin_api.patch(f"/users/{victim.id}", json={"active": True}).status_code == 200


def _api_promoted(app, admin_api, admin_web, victim):
    assert admin_api.patch(f"/users/{victim.id}", json={"role": "admin"}).status_code == 200


def _page_password(app, admin_api, admin_web, victim):
    r = admin_web.post(f"/users/{victim.id}", {"email": victim.email, "role": "member", "active": "on",
                                               "password": NEW_PASSWORD})
    assert r.status_code == 303 and r.headers["Location"].endswith("/users"), r.get_data(as_text=True)


def _page_promoted(app, admin_api, admin_web, victim):
    r = admin_web.post(f"/users/{victim.id}", {"email": victim.email, "role": "admin", "active": "on"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/users"), r.get_data(as_text=True)


def _cli_create_admin(app, admin_api, admin_web, victim):
    r = app.test_cli_runner().invoke(args=["create-admin", "--email", victim.email, "--password", NEW_PASSWORD])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("end", [_api_password, _api_reactivated, _api_promoted, _page_password, _page_promoted,
                                 _cli_create_admin])
def test_every_login_of_the_user_ends_together(app, admin_api, admin_web, victim, bystander, end):
    assert victim.token_works() and victim.dashboard_works()
    end(app, admin_api, admin_web, victim)
    assert not victim.token_works()
    assert not victim.dashboard_works()
    # nobody else's logins end, the admin's included
    assert bystander.token_works() and bystander.dashboard_works()
    assert admin_api.get("/users").status_code == 200
    assert admin_web.get("/users").status_code == 200
    tokens = admin_api.get(f"/tokens?user_id={victim.id}").get_json()["tokens"]
    assert len(tokens) == 1 and tokens[0]["revoked_at"] is not None and tokens[0]["active"] is False


def test_a_demoted_admin_is_logged_out_everywhere(app, admin_api):
    second = Person(app, "second@example.com", "admin")
    assert second.api.get("/users").status_code == 200
    assert admin_api.patch(f"/users/{second.id}", json={"role": "member"}).status_code == 200
    assert_error(second.api.get("/virtual-keys"), 401, "unauthorized")
    assert not second.dashboard_works()


def test_deleting_the_user_deletes_their_tokens(app, admin_api, victim):
    assert admin_api.delete(f"/users/{victim.id}").status_code == 204
    assert not victim.token_works() and not victim.dashboard_works()
    assert count(app, ApiToken, ApiToken.user_id == victim.id) == 0
    assert count(app, Login, Login.user_id == victim.id) == 0


def test_an_email_change_ends_nothing(admin_api, victim):
    assert admin_api.patch(f"/users/{victim.id}", json={"email": "renamed@example.com"}).status_code == 200
    assert victim.token_works() and victim.dashboard_works()


def test_a_new_one_time_password_ends_the_bootstrap_admins_logins(app, client, monkeypatch):
    """ensure-admin gives a bootstrap admin who never chose a password a fresh one-time one: a
    token from before (say, minted with the first one before tokens needed a chosen password) ends."""
    monkeypatch.delenv("PORTCULLIS_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("PORTCULLIS_ADMIN_PASSWORD", raising=False)
    assert app.test_cli_runner().invoke(args=["ensure-admin"]).exit_code == 0
    with app.app_context():
        uid = db.session.scalar(select(User.id))
    old = token_for(app, uid)
    assert app.test_cli_runner().invoke(args=["ensure-admin"]).exit_code == 0
    assert_error(CheckedApi(Api(client, old)).get("/virtual-keys"), 401, "unauthorized")


# --- GET /api/v1/tokens -------------------------------------------------------------------

def test_list_own_tokens_newest_first_without_the_tokens(app, client, member_id, member_api):
    second = mint(app, client, "member@example.com")
    body = member_api.get("/tokens").get_json()
    assert (body["count"], body["total_count"], body["limit"], body["offset"]) == (2, 2, 50, 0)
    first, older = body["tokens"]
    assert first["id"] > older["id"] and first["user_id"] == older["user_id"] == member_id
    assert second.token.startswith(first["prefix"]) and member_api.token.startswith(older["prefix"])
    assert all(t["active"] and t["revoked_at"] is None for t in body["tokens"])
    assert older["last_used_at"] is not None  # it is the one asking
    text = member_api.get("/tokens").get_data(as_text=True)
    assert member_api.token not in text and second.token not in text
    page = member_api.get("/tokens?limit=1&offset=1").get_json()
    assert (page["count"], page["total_count"], [t["id"] for t in page["tokens"]]) == (1, 2, [older["id"]])


def test_admins_list_any_users_tokens_members_only_their_own(admin_api, member_api, admin_id, member_id):
    mine = admin_api.get("/tokens").get_json()["tokens"]
    assert [t["user_id"] for t in mine] == [admin_id]
    theirs = admin_api.get(f"/tokens?user_id={member_id}").get_json()["tokens"]
    assert [t["user_id"] for t in theirs] == [member_id]
    own = member_api.get(f"/tokens?user_id={member_id}").get_json()["tokens"]
    assert [t["id"] for t in own] == [t["id"] for t in theirs]
    err = assert_error(member_api.get(f"/tokens?user_id={admin_id}"), 403, "forbidden")
    assert set(err["fields"]) == {"user_id"}
    assert_error(admin_api.get("/tokens?user_id=999999"), 404, "not_found")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "%C2%B2", "2147483648", "9" * 5000])
def test_list_tokens_bad_user_id(admin_api, value):
    assert_error(admin_api.get(f"/tokens?user_id={value}"), 400, "bad_request", {"user_id"})


# --- DELETE /api/v1/tokens/<id> -----------------------------------------------------------

def _token_id(api) -> int:
    return api.get("/tokens").get_json()["tokens"][0]["id"]


def test_revoke_own_token(app, client, member_id, member_api):
    other = mint(app, client, "member@example.com")
    other_id = _token_id(other)
    n = len(audit_actions(app))
    assert member_api.delete(f"/tokens/{other_id}").status_code == 204
    assert_error(other.get("/tokens"), 401, "unauthorized")
    assert member_api.get("/tokens").status_code == 200  # the one that asked still works
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.actor, event.target_id) == ("token.revoke", "member@example.com", member_id)
        assert event.detail == f"prefix={other.token[:12]}" and other.token not in event.detail
    # again: nothing more to do, nothing more audited
    assert member_api.delete(f"/tokens/{other_id}").status_code == 204
    assert len(audit_actions(app)) == n + 1
    listed = {t["id"]: t for t in member_api.get("/tokens").get_json()["tokens"]}
    assert listed[other_id]["active"] is False and listed[other_id]["revoked_at"] is not None
    # and the token making the call can end itself
    assert member_api.delete(f"/tokens/{min(listed)}").status_code == 204
    assert_error(member_api.get("/tokens"), 401, "unauthorized")


def test_others_tokens_are_not_found_for_members_admins_revoke_any(app, admin_api, member_api):
    admin_token = _token_id(admin_api)
    member_token = _token_id(member_api)
    assert_error(member_api.delete(f"/tokens/{admin_token}"), 404, "not_found")
    assert_error(member_api.delete("/tokens/999999"), 404, "not_found")
    assert admin_api.get("/tokens").status_code == 200
    assert admin_api.delete(f"/tokens/{member_token}").status_code == 204
    assert_error(member_api.get("/tokens"), 401, "unauthorized")
    assert audit_actions(app)[-1] == "token.revoke"


# --- a one-time password must be changed first ---------------------------------------------

@pytest.fixture
def bootstrap_admin(app, monkeypatch) -> tuple[int, str]:
    """The first admin as `make run` creates it: a printed one-time password."""
    monkeypatch.delenv("PORTCULLIS_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("PORTCULLIS_ADMIN_PASSWORD", raising=False)
    out = app.test_cli_runner().invoke(args=["ensure-admin"]).output
    with app.app_context():
        uid = db.session.scalar(select(User.id).where(User.email == "admin@localhost"))
    return uid, re.search(r"password: (\S+)", out).group(1)


def test_no_token_for_a_one_time_password(app, client, bootstrap_admin):
    _uid, password = bootstrap_admin
    r = client.post("/api/v1/tokens", json={"email": "admin@localhost", "password": password})
    check_against_doc(app, "POST", "/api/v1/tokens", r)
    err = assert_error(r, 403, "password_change_required")
    assert "/account/password" in err["message"]
    assert count(app, ApiToken) == 0
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.detail) == ("token.denied", "password change required")
    # a wrong password is still just wrong
    assert_error(client.post("/api/v1/tokens", json={"email": "admin@localhost", "password": "not it at all"}),
                 401, "unauthorized")


def test_an_existing_token_is_refused_everywhere_until_the_password_is_changed(app, client, bootstrap_admin):
    uid, password = bootstrap_admin
    api = CheckedApi(Api(client, token_for(app, uid)))  # a token from before: issued directly
    seen = 0
    for method, path, endpoint in api_rules(app):
        if endpoint in PUBLIC:
            continue
        assert_error(getattr(api, method.lower())(path, json={}), 403, "password_change_required")
        seen += 1
    assert seen >= 25
    # the dashboard page is where it is changed; then the old token has ended and a new one works
    web = Web(app.test_client())
    r = web.client.post("/login", data={"email": "admin@localhost", "password": password,
                                        "csrf_token": csrf_in(web.client.get("/login").get_data(as_text=True))})
    assert r.headers["Location"].endswith("/account/password")
    form = web.client.get("/account/password").get_data(as_text=True)
    r = web.client.post("/account/password", data={
        "current_password": password, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD,
        "csrf_token": csrf_in(form)})
    assert r.status_code == 302
    assert_error(api.get("/virtual-keys"), 401, "unauthorized")
    assert mint(app, client, "admin@localhost", NEW_PASSWORD).get("/users").status_code == 200
