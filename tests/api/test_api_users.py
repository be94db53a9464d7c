"""/api/v1/users: admins manage people; the last active admin is protected."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import ApiToken, AuditEvent, Login, User, VirtualKey
from app.models.base import digest, utcnow
from tests.conftest import PASSWORD, Api, make_user, token_for
from tests.support.api import admin_api, member_api  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.api import assert_error, audit_actions, count, new_key, new_user, unchanged


def login(client, email, password):
    return client.post("/api/v1/tokens", json={"email": email, "password": password}).status_code


def test_list_users(admin_api, member_id):
    body = admin_api.get("/users").get_json()
    assert [u["email"] for u in body["users"]] == ["admin@example.com", "member@example.com"]
    assert body["total_count"] == 2
    admin = body["users"][0]
    assert admin["role"] == "admin" and admin["active"] is True
    assert "password" not in str(body) and "hash" not in str(body)


@pytest.mark.parametrize("q,expected", [("member", ["member@example.com"]), ("MEMBER", ["member@example.com"]),
                                        ("example.com", ["admin@example.com", "member@example.com"]),
                                        ("%", []), ("_", []), ("nobody", [])])
def test_search_users(admin_api, member_id, q, expected):
    body = admin_api.get("/users", query_string={"q": q}).get_json()
    assert [u["email"] for u in body["users"]] == expected
    assert body["total_count"] == len(expected)


def test_create_user(app, admin_api, client):
    r = admin_api.post("/users", json={"email": "  New.Person@Example.COM ", "password": "ten chars!"})
    assert r.status_code == 201
    user = r.get_json()
    assert user["email"] == "new.person@example.com"
    assert (user["role"], user["active"], user["last_login_at"]) == ("member", True, None)
    assert admin_api.get(f"/users/{user['id']}").get_json() == user
    assert login(client, "new.person@example.com", "ten chars!") == 201
    assert audit_actions(app)[-2:] == ["user.create", "token.create"]
    with app.app_context():
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "user.create"))
        assert (event.target, event.detail) == ("new.person@example.com", "role=member")
        assert "ten chars!" not in event.detail


def test_create_admin_and_inactive_user(app, admin_api, client):
    admin = new_user(admin_api, "boss@example.com", role="admin")
    assert admin["role"] == "admin"
    inactive = new_user(admin_api, "later@example.com", active=False)
    assert inactive["active"] is False
    assert login(client, "later@example.com", "a-long-password") == 401


@pytest.mark.parametrize("payload,fields", [
    ({}, {"email", "password"}),
    ({"email": "x@example.com"}, {"password"}),
    ({"password": "a-long-password"}, {"email"}),
    ({"email": "not-an-address", "password": "a-long-password"}, {"email"}),
    ({"email": "two@@example.com", "password": "a-long-password"}, {"email"}),
    ({"email": "a b@example.com", "password": "a-long-password"}, {"email"}),
    ({"email": "", "password": "a-long-password"}, {"email"}),
    ({"email": "a" * 250 + "@example.com", "password": "a-long-password"}, {"email"}),
    ({"email": 42, "password": "a-long-password"}, {"email"}),
    ({"email": "x@example.com", "password": "nine char"}, {"password"}),
    ({"email": "x@example.com", "password": 1234567890}, {"password"}),
    ({"email": "x@example.com", "password": "x" * 201}, {"password"}),
    ({"email": "x@example.com", "password": "a-long-password", "role": "root"}, {"role"}),
    ({"email": "x@example.com", "password": "a-long-password", "role": None}, {"role"}),
    ({"email": "x@example.com", "password": "a-long-password", "active": "yes"}, {"active"}),
    ({"email": "x@example.com", "password": "a-long-password", "active": 1}, {"active"}),
    ({"email": "x@example.com", "password": "a-long-password", "is_admin": True}, {"is_admin"}),
    ({"email": 1, "password": 2, "role": 3, "active": 4}, {"email", "password", "role", "active"}),
])
def test_create_user_invalid(app, admin_api, payload, fields):
    with unchanged(admin_api, "/users"):
        assert_error(admin_api.post("/users", json=payload), 422, "validation_failed", fields)
    assert count(app, User) == 1


def test_password_length_counts_spaces_and_is_exactly_ten(admin_api):
    assert new_user(admin_api, "ten@example.com", password="1234567890")
    r = admin_api.post("/users", json={"email": "sp@example.com", "password": "   abc    "})
    assert r.status_code == 201  # ten characters, spaces included: not stripped


@pytest.mark.parametrize("email", ["member@example.com", "MEMBER@example.com", " Member@Example.com "])
def test_duplicate_email(app, admin_api, member_id, email):
    with unchanged(admin_api, "/users"):
        err = assert_error(admin_api.post("/users", json={"email": email, "password": "a-long-password"}),
                           409, "conflict")
    assert err["fields"] == {"email": "is already taken"}
    assert count(app, User) == 2


def test_get_user(admin_api, member_id):
    user = admin_api.get(f"/users/{member_id}").get_json()
    assert (user["id"], user["email"], user["role"]) == (member_id, "member@example.com", "member")
    assert_error(admin_api.get("/users/999999"), 404, "not_found")


def test_update_user(app, admin_api, member_id, client):
    r = admin_api.patch(f"/users/{member_id}", json={"email": "Renamed@Example.com", "role": "admin"})
    assert r.status_code == 200
    assert (r.get_json()["email"], r.get_json()["role"]) == ("renamed@example.com", "admin")
    assert admin_api.get(f"/users/{member_id}").get_json() == r.get_json()
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.detail) == ("user.update", "email, role=admin")


def test_update_nothing_is_not_audited(app, admin_api, member_id):
    before = admin_api.get(f"/users/{member_id}").get_json()
    for payload in ({}, {"email": "MEMBER@example.com"}, {"role": "member", "active": True}):
        r = admin_api.patch(f"/users/{member_id}", json=payload)
        assert r.status_code == 200
        assert r.get_json() == before
    assert audit_actions(app) == []


def test_change_password(app, admin_api, member_id, client):
    assert login(client, "member@example.com", PASSWORD) == 201
    r = admin_api.patch(f"/users/{member_id}", json={"password": "a brand new one"})
    assert r.status_code == 200
    assert login(client, "member@example.com", PASSWORD) == 401
    assert login(client, "member@example.com", "a brand new one") == 201
    with app.app_context():
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "user.update"))
        assert event.detail == "password"


def _login(app, user_id) -> int:
    with app.app_context():
        row = Login(token_hash=digest(f"s-{user_id}-{utcnow()}"), user_id=user_id,
                               expires_at=utcnow() + timedelta(hours=1))
        db.session.add(row)
        db.session.commit()
        return row.id


def _session_revoked(app, sid) -> bool:
    with app.app_context():
        revoked = db.session.get(Login, sid).revoked_at is not None
        db.session.remove()
        return revoked


@pytest.mark.parametrize("payload", [{"active": False}, {"password": "another long one"}])
def test_deactivation_and_password_change_end_dashboard_sessions(app, admin_api, member_id, payload):
    sid = _login(app, member_id)
    assert admin_api.patch(f"/users/{member_id}", json=payload).status_code == 200
    assert _session_revoked(app, sid)


def test_deactivate_and_reactivate(app, admin_api, member_id, client):
    assert admin_api.patch(f"/users/{member_id}", json={"active": False}).get_json()["active"] is False
    assert login(client, "member@example.com", PASSWORD) == 401
    assert admin_api.patch(f"/users/{member_id}", json={"active": True}).get_json()["active"] is True
    assert login(client, "member@example.com", PASSWORD) == 201


@pytest.mark.parametrize("payload,fields", [
    ({"email": "bad"}, {"email"}), ({"email": None}, {"email"}), ({"password": "short"}, {"password"}),
    ({"role": "owner"}, {"role"}), ({"active": "false"}, {"active"}), ({"name": "x"}, {"name"}),
    ({"password": None}, {"password"}),
])
def test_update_user_invalid(admin_api, member_id, payload, fields):
    with unchanged(admin_api, "/users", f"/users/{member_id}"):
        assert_error(admin_api.patch(f"/users/{member_id}", json=payload), 422, "validation_failed", fields)


def test_update_email_to_a_taken_one(admin_api, member_id):
    with unchanged(admin_api, "/users"):
        err = assert_error(admin_api.patch(f"/users/{member_id}", json={"email": "ADMIN@example.com"}), 409,
                           "conflict")
    assert err["fields"] == {"email": "is already taken"}


def test_update_unknown_user(admin_api):
    assert_error(admin_api.patch("/users/999999", json={"role": "member"}), 404, "not_found")


# --- the last active admin ----------------------------------------------------------------

@pytest.mark.parametrize("payload", [{"role": "member"}, {"active": False}, {"role": "member", "active": False}])
def test_last_active_admin_cannot_be_demoted_or_deactivated(app, admin_api, admin_id, payload):
    make_user(app, "sleeping@example.com", "admin", active=False)  # an inactive admin does not count
    with unchanged(admin_api, "/users"):
        err = assert_error(admin_api.patch(f"/users/{admin_id}", json=payload), 409, "conflict")
    assert "last active admin" in err["message"]


def test_last_admin_change_is_all_or_nothing(admin_api, admin_id):
    """An e-mail change in the same refused request is not applied either."""
    with unchanged(admin_api, "/users"):
        assert_error(admin_api.patch(f"/users/{admin_id}", json={"email": "new@example.com", "role": "member"}),
                     409)


def test_admin_can_step_down_when_another_admin_is_active(app, client, admin_api, admin_id):
    make_user(app, "second@example.com", "admin")
    assert admin_api.patch(f"/users/{admin_id}", json={"role": "member"}).status_code == 200
    # a role change ends the user's logins, this token included; a new one is a member's
    assert_error(admin_api.get("/virtual-keys"), 401)
    assert_error(Api(client, token_for(app, admin_id)).get("/users"), 403)


def test_cannot_delete_yourself(app, admin_api, admin_id):
    make_user(app, "second@example.com", "admin")
    with unchanged(admin_api, "/users"):
        err = assert_error(admin_api.delete(f"/users/{admin_id}"), 409, "conflict")
    assert "your own account" in err["message"]


def test_last_active_admin_cannot_be_deleted(app, client, admin_id):
    """Reachable only through the operation (an API caller is an active admin themselves)."""
    from app.ops import users as ops
    from app.ops.errors import Conflict

    with app.test_request_context():
        with pytest.raises(Conflict):
            ops.delete_user(db.session.get(User, admin_id))
        db.session.rollback()
    assert count(app, User) == 1


# --- deleting ---------------------------------------------------------------------------------

def test_delete_user_removes_their_keys_and_tokens(app, admin_api, member_api, member_id):
    key = new_key(admin_api, "members key", owner_id=member_id)
    other = new_key(admin_api, "unowned")
    r = admin_api.delete(f"/users/{member_id}")
    assert r.status_code == 204 and r.get_data() == b""
    assert_error(admin_api.get(f"/users/{member_id}"), 404)
    assert_error(admin_api.get(f"/virtual-keys/{key['id']}"), 404)
    assert admin_api.get(f"/virtual-keys/{other['id']}").status_code == 200
    assert count(app, VirtualKey) == 1 and count(app, ApiToken, ApiToken.user_id == member_id) == 0
    assert_error(member_api.get("/virtual-keys"), 401)
    assert audit_actions(app)[-1] == "user.delete"
    assert_error(admin_api.delete(f"/users/{member_id}"), 404)


def test_delete_another_admin(app, admin_api):
    other = new_user(admin_api, "other-admin@example.com", role="admin")
    assert admin_api.delete(f"/users/{other['id']}").status_code == 204
    assert count(app, User) == 1


def test_delete_unknown_user(app, admin_api):
    with unchanged(admin_api, "/users"):
        assert_error(admin_api.delete("/users/999999"), 404, "not_found")
