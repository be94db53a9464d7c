"""/api/v1/virtual-keys: the secret is shown once, grants are replaced on update, members
see and delete only their own keys."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.extensions import db
from app.models import VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant
from app.models.base import digest, utcnow
from tests.conftest import make_user
from tests.support.api import admin_api, member_api  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.api import assert_error, audit_actions, count, last_event, new_key, new_server, new_service, unchanged

FIELDS = {"id", "name", "key_prefix", "owner_id", "source", "agent_id", "mcp_servers", "services",
          "rate_limit_per_minute", "expires_at", "active", "status", "created_at", "updated_at", "last_used_at"}


def future(**delta) -> str:
    return (utcnow() + timedelta(**(delta or {"days": 30}))).replace(microsecond=0).isoformat() + "Z"



@pytest.fixture
def servers(admin_api):
    return [new_server(admin_api, name)["id"] for name in ("one", "two")]


@pytest.fixture
def services(admin_api):
    return [new_service(admin_api, name)["id"] for name in ("svc-a", "svc-b")]


def counts(app):
    return (count(app, VirtualKey), count(app, VirtualKeyServerGrant), count(app, VirtualKeyServiceGrant))


# --- create and the one-time secret ----------------------------------------------------------

def test_create_minimal(app, admin_api):
    r = admin_api.post("/virtual-keys", json={"name": "ci agent"})
    assert r.status_code == 201
    key = r.get_json()
    assert set(key) == FIELDS | {"key"}
    secret = key.pop("key")
    assert secret.startswith("vk_") and len(secret) >= 3 + 43  # vk_ + 32 random bytes, url-safe base64
    assert key["key_prefix"] == secret[:11]
    assert {k: key[k] for k in ("name", "owner_id", "source", "agent_id", "mcp_servers", "services",
                                "rate_limit_per_minute", "expires_at", "active", "status", "last_used_at")} == {
        "name": "ci agent", "owner_id": None, "source": "api", "agent_id": None, "mcp_servers": [],
        "services": [], "rate_limit_per_minute": 60, "expires_at": None, "active": True, "status": "active",
        "last_used_at": None}
    with app.app_context():
        row = db.session.get(VirtualKey, key["id"])
        assert row.key_hash == digest(secret) and secret not in (row.key_hash, row.key_prefix)
    event = last_event(app)
    assert (event.action, event.detail) == ("virtual_key.create", "source=api, servers=0, services=0")
    assert secret not in event.detail


def test_secret_is_shown_once(admin_api, member_api, member_id):
    created = new_key(admin_api, "once", owner_id=member_id)
    secret = created.pop("key")
    detail = admin_api.get(f"/virtual-keys/{created['id']}")
    listing = admin_api.get("/virtual-keys")
    mine = member_api.get(f"/virtual-keys/{created['id']}")
    patched = admin_api.patch(f"/virtual-keys/{created['id']}", json={"name": "renamed"})
    for r in (detail, listing, mine, member_api.get("/virtual-keys"), patched):
        assert r.status_code == 200
        assert secret not in r.get_data(as_text=True)
        assert secret[11:] not in r.get_data(as_text=True)
    assert "key" not in detail.get_json() and "key" not in listing.get_json()["virtual_keys"][0]
    assert detail.get_json() == {**created, "updated_at": detail.get_json()["updated_at"]}


def test_every_key_is_different(admin_api):
    secrets = {new_key(admin_api, f"k{i}")["key"] for i in range(5)}
    assert len(secrets) == 5


def test_create_with_everything(app, admin_api, member_id, servers, services):
    expires = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    key = new_key(admin_api, "  full  ", owner_id=member_id, agent_id="claude-1", rate_limit_per_minute=5,
                  expires_at=(expires + timedelta(hours=2)).isoformat() + "+02:00",
                  mcp_servers=[{"server_id": servers[1], "tools": ["search", "fetch", "search", " fetch "]},
                               {"server_id": servers[0], "tools": None}],
                  services=[{"service_id": services[0]}, {"service_id": services[1], "scope": "write"}])
    assert key["name"] == "full"
    assert (key["owner_id"], key["agent_id"], key["rate_limit_per_minute"]) == (member_id, "claude-1", 5)
    assert key["expires_at"] == expires.isoformat() + "Z"
    assert key["mcp_servers"] == [{"server_id": servers[0], "tools": None},
                                  {"server_id": servers[1], "tools": ["fetch", "search"]}]
    assert key["services"] == [{"service_id": services[0], "scope": "read"},
                               {"service_id": services[1], "scope": "write"}]
    assert last_event(app).detail == "source=api, servers=2, services=2"
    assert counts(app) == (1, 2, 2)


def test_empty_tool_list_means_no_tools(admin_api, servers):
    key = new_key(admin_api, mcp_servers=[{"server_id": servers[0], "tools": []}])
    assert key["mcp_servers"] == [{"server_id": servers[0], "tools": []}]


@pytest.mark.parametrize("payload,bad", [
    ({}, {"name"}),
    ({"name": ""}, {"name"}),
    ({"name": "   "}, {"name"}),
    ({"name": None}, {"name"}),
    ({"name": 5}, {"name"}),
    ({"name": "x" * 101}, {"name"}),
    ({"name": "two\nlines"}, {"name"}),
    ({"name": "k", "key": "vk_mine"}, {"key"}),
    ({"name": "k", "source": "dashboard"}, {"source"}),
    ({"name": "k", "owner_id": 999999}, {"owner_id"}),
    ({"name": "k", "owner_id": 2**40}, {"owner_id"}),
    ({"name": "k", "owner_id": "1"}, {"owner_id"}),
    ({"name": "k", "owner_id": True}, {"owner_id"}),
    ({"name": "k", "agent_id": 7}, {"agent_id"}),
    ({"name": "k", "agent_id": "a" * 201}, {"agent_id"}),
    ({"name": "k", "rate_limit_per_minute": 0}, {"rate_limit_per_minute"}),
    ({"name": "k", "rate_limit_per_minute": -5}, {"rate_limit_per_minute"}),
    ({"name": "k", "rate_limit_per_minute": 100_001}, {"rate_limit_per_minute"}),
    ({"name": "k", "rate_limit_per_minute": "60"}, {"rate_limit_per_minute"}),
    ({"name": "k", "rate_limit_per_minute": 1.5}, {"rate_limit_per_minute"}),
    ({"name": "k", "rate_limit_per_minute": None}, {"rate_limit_per_minute"}),
    ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
    ({"name": "k", "expires_at": "tomorrow"}, {"expires_at"}),
    ({"name": "k", "expires_at": "2030-13-01T00:00:00Z"}, {"expires_at"}),
    ({"name": "k", "expires_at": ""}, {"expires_at"}),
    ({"name": "k", "expires_at": 1893456000}, {"expires_at"}),
    ({"name": "k", "expires_at": "0001-01-01T00:30:00+01:00"}, {"expires_at"}),
    ({"name": "k", "active": "true"}, {"active"}),
    ({"name": "k", "mcp_servers": {"1": None}}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [1]}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [{"tools": None}]}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [{"server_id": "1"}]}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [{"server_id": True}]}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [{"server_id": 999999}]}, {"mcp_servers"}),
    ({"name": "k", "mcp_servers": [{"server_id": 2**40}]}, {"mcp_servers"}),
    ({"name": "k", "services": None}, {"services"}),
    ({"name": "k", "services": [{"service_id": 999999, "scope": "read"}]}, {"services"}),
    ({"name": "k", "services": [{"service_id": 2**40}]}, {"services"}),
    ({"name": "k", "services": [{"scope": "read"}]}, {"services"}),
    ({"name": "k", "services": ["svc-a"]}, {"services"}),
    ({"name": 1, "owner_id": "x", "rate_limit_per_minute": 0, "active": None},
     {"name", "owner_id", "rate_limit_per_minute", "active"}),
])
def test_create_invalid(app, admin_api, payload, bad):
    with unchanged(admin_api, "/virtual-keys"):
        assert_error(admin_api.post("/virtual-keys", json=payload), 422, "validation_failed", bad)
    assert counts(app) == (0, 0, 0)


def test_expiry_far_in_the_future_with_an_offset(admin_api):
    """A date-time at the edge of the calendar is a field error, not a crash."""
    r = admin_api.post("/virtual-keys", json={"name": "k", "expires_at": "9999-12-31T23:30:00-01:00"})
    assert_error(r, 422, "validation_failed", {"expires_at"})


def test_expiry_without_offset_is_utc(admin_api):
    at = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    assert new_key(admin_api, expires_at=at.isoformat())["expires_at"] == at.isoformat() + "Z"


@pytest.mark.parametrize("grants,message", [
    ([{"server_id": "S0", "tools": "all"}], "tools must be null"),
    ([{"server_id": "S0", "tools": [""]}], "tools must be null"),
    ([{"server_id": "S0", "tools": ["ok", 3]}], "tools must be null"),
    ([{"server_id": "S0", "tools": None, "scope": "read"}], "must be an object with server_id and tools"),
    ([{"server_id": "S0"}, {"server_id": "S0", "tools": ["x"]}], "listed twice"),
    ([{"server_id": "S0"}, {"server_id": 999999}, {"server_id": 999998}], "unknown server id(s): 999998, 999999"),
])
def test_server_grant_errors(app, admin_api, servers, grants, message):
    for g in grants:
        if g["server_id"] == "S0":
            g["server_id"] = servers[0]
    err = assert_error(admin_api.post("/virtual-keys", json={"name": "k", "mcp_servers": grants}), 422,
                       "validation_failed", {"mcp_servers"})
    assert message in err["fields"]["mcp_servers"]
    assert counts(app) == (0, 0, 0)


@pytest.mark.parametrize("grants,message", [
    ([{"service_id": "S0", "scope": "admin"}], "scope must be read or write"),
    ([{"service_id": "S0", "scope": None}], "scope must be read or write"),
    ([{"service_id": "S0"}, {"service_id": "S0", "scope": "write"}], "listed twice"),
    ([{"service_id": 999999}], "unknown service id(s): 999999"),
])
def test_service_grant_errors(app, admin_api, services, grants, message):
    for g in grants:
        if g["service_id"] == "S0":
            g["service_id"] = services[0]
    err = assert_error(admin_api.post("/virtual-keys", json={"name": "k", "services": grants}), 422,
                       "validation_failed", {"services"})
    assert message in err["fields"]["services"]
    assert counts(app) == (0, 0, 0)


# --- list and get -----------------------------------------------------------------------------

def test_admin_lists_every_key_newest_first(admin_api, member_id):
    a = new_key(admin_api, "first")
    b = new_key(admin_api, "second", owner_id=member_id)
    body = admin_api.get("/virtual-keys").get_json()
    assert [k["id"] for k in body["virtual_keys"]] == [b["id"], a["id"]]
    assert body["total_count"] == 2


def test_member_lists_only_own_keys(app, admin_api, member_api, member_id):
    other = make_user(app, "other@example.com")
    mine = new_key(admin_api, "mine", owner_id=member_id)
    new_key(admin_api, "theirs", owner_id=other)
    new_key(admin_api, "nobody's")
    body = member_api.get("/virtual-keys").get_json()
    assert [k["id"] for k in body["virtual_keys"]] == [mine["id"]]
    assert body["total_count"] == 1
    assert member_api.get("/virtual-keys?q=theirs").get_json()["total_count"] == 0


def test_search_by_name_or_prefix(admin_api):
    a = new_key(admin_api, "Deploy Bot")
    b = new_key(admin_api, "reporting")
    assert [k["id"] for k in admin_api.get("/virtual-keys?q=Deploy").get_json()["virtual_keys"]] == [a["id"]]
    assert [k["id"] for k in admin_api.get("/virtual-keys?q=deploy").get_json()["virtual_keys"]] == [a["id"]]
    found = admin_api.get("/virtual-keys", query_string={"q": b["key_prefix"]}).get_json()["virtual_keys"]
    assert [k["id"] for k in found] == [b["id"]]
    assert admin_api.get("/virtual-keys?q=%25").get_json()["total_count"] == 0


def test_filter_by_source(app, admin_api):
    from app.ops import keys as ops

    api_key = new_key(admin_api, "from api")
    with app.test_request_context():
        key, _secret = ops.create_key({"name": "from dashboard"}, source="dashboard")
        db.session.commit()
        dashboard_id = key.id
    assert [k["id"] for k in admin_api.get("/virtual-keys?source=api").get_json()["virtual_keys"]] == [api_key["id"]]
    found = admin_api.get("/virtual-keys?source=dashboard").get_json()["virtual_keys"]
    assert [(k["id"], k["source"]) for k in found] == [(dashboard_id, "dashboard")]
    assert admin_api.get("/virtual-keys?source=mcp").get_json()["total_count"] == 0


def test_member_reads_own_key_only(app, admin_api, member_api, member_id):
    mine = new_key(admin_api, "mine", owner_id=member_id)
    theirs = new_key(admin_api, "theirs", owner_id=make_user(app, "other@example.com"))
    unowned = new_key(admin_api, "unowned")
    assert member_api.get(f"/virtual-keys/{mine['id']}").get_json()["name"] == "mine"
    for key in (theirs, unowned):
        err = assert_error(member_api.get(f"/virtual-keys/{key['id']}"), 404, "not_found")
        assert err["message"] == "no such virtual key"


def test_status_of_expired_and_revoked_keys(app, admin_api):
    key = new_key(admin_api, expires_at=future(days=1))
    with app.app_context():
        db.session.get(VirtualKey, key["id"]).expires_at = utcnow() - timedelta(seconds=5)
        db.session.commit()
    assert admin_api.get(f"/virtual-keys/{key['id']}").get_json()["status"] == "expired"
    revoked = new_key(admin_api, "r")
    assert admin_api.patch(f"/virtual-keys/{revoked['id']}", json={"active": False}).get_json()["status"] == "revoked"


# --- update -----------------------------------------------------------------------------------

def test_update_fields(app, admin_api, member_id):
    key = new_key(admin_api, "before", agent_id="a1", expires_at=future())
    r = admin_api.patch(f"/virtual-keys/{key['id']}", json={
        "name": "after", "agent_id": None, "rate_limit_per_minute": 120, "expires_at": None, "owner_id": member_id})
    assert r.status_code == 200
    body = r.get_json()
    assert "key" not in body
    assert (body["name"], body["agent_id"], body["rate_limit_per_minute"], body["expires_at"], body["owner_id"]) == (
        "after", None, 120, None, member_id)
    assert body["key_prefix"] == key["key_prefix"] and body["source"] == "api"
    assert admin_api.get(f"/virtual-keys/{key['id']}").get_json() == body
    event = last_event(app)
    assert event.action == "virtual_key.update"
    assert event.detail == "changed name, owner_id, agent_id, rate_limit_per_minute, expires_at"


def test_update_nothing_is_not_audited(app, admin_api, servers):
    key = new_key(admin_api, "same", mcp_servers=[{"server_id": servers[0], "tools": ["b", "a"]}])
    r = admin_api.patch(f"/virtual-keys/{key['id']}", json={
        "name": "same", "active": True, "mcp_servers": [{"server_id": servers[0], "tools": ["a", "b"]}]})
    assert r.status_code == 200
    assert admin_api.patch(f"/virtual-keys/{key['id']}", json={}).status_code == 200
    assert audit_actions(app)[-1] == "virtual_key.create"


def test_revoke_and_reactivate(app, admin_api):
    key = new_key(admin_api)
    assert admin_api.patch(f"/virtual-keys/{key['id']}", json={"active": False}).get_json()["active"] is False
    assert last_event(app).action == "virtual_key.revoke"
    assert admin_api.patch(f"/virtual-keys/{key['id']}", json={"active": True}).get_json()["active"] is True
    assert last_event(app).action == "virtual_key.update"


def test_grants_are_replaced(app, admin_api, servers, services):
    key = new_key(admin_api, mcp_servers=[{"server_id": servers[0], "tools": None}],
                  services=[{"service_id": services[0], "scope": "write"}])
    path = f"/virtual-keys/{key['id']}"
    body = admin_api.patch(path, json={"mcp_servers": [{"server_id": servers[1], "tools": ["x"]}]}).get_json()
    assert body["mcp_servers"] == [{"server_id": servers[1], "tools": ["x"]}]
    assert body["services"] == [{"service_id": services[0], "scope": "write"}]  # not named: kept
    assert last_event(app).detail == "changed mcp_servers"
    body = admin_api.patch(path, json={"services": [{"service_id": services[1]}, {"service_id": services[0]}],
                                       "mcp_servers": [{"server_id": servers[1], "tools": None}]}).get_json()
    assert body["services"] == [{"service_id": services[0], "scope": "read"},
                                {"service_id": services[1], "scope": "read"}]
    assert body["mcp_servers"] == [{"server_id": servers[1], "tools": None}]
    assert last_event(app).detail == "changed mcp_servers, services"
    body = admin_api.patch(path, json={"mcp_servers": [], "services": []}).get_json()
    assert (body["mcp_servers"], body["services"]) == ([], [])
    assert counts(app) == (1, 0, 0)


def test_a_change_of_tools_or_scope_alone_is_a_change(app, admin_api, servers, services):
    key = new_key(admin_api, mcp_servers=[{"server_id": servers[0], "tools": ["a"]}],
                  services=[{"service_id": services[0], "scope": "read"}])
    path = f"/virtual-keys/{key['id']}"
    body = admin_api.patch(path, json={"mcp_servers": [{"server_id": servers[0], "tools": ["a", "b"]}]}).get_json()
    assert body["mcp_servers"] == [{"server_id": servers[0], "tools": ["a", "b"]}]
    assert (last_event(app).action, last_event(app).detail) == ("virtual_key.update", "changed mcp_servers")
    body = admin_api.patch(path, json={"mcp_servers": [{"server_id": servers[0], "tools": None}]}).get_json()
    assert body["mcp_servers"] == [{"server_id": servers[0], "tools": None}]
    assert last_event(app).detail == "changed mcp_servers"
    body = admin_api.patch(path, json={"services": [{"service_id": services[0], "scope": "write"}]}).get_json()
    assert body["services"] == [{"service_id": services[0], "scope": "write"}]
    assert last_event(app).detail == "changed services"
    assert audit_actions(app).count("virtual_key.update") == 3


@pytest.mark.parametrize("payload,bad", [
    ({"name": ""}, {"name"}), ({"name": None}, {"name"}), ({"owner_id": 999999}, {"owner_id"}),
    ({"rate_limit_per_minute": 0}, {"rate_limit_per_minute"}), ({"active": None}, {"active"}),
    ({"expires_at": "2000-01-01T00:00:00Z"}, {"expires_at"}), ({"expires_at": "soon"}, {"expires_at"}),
    ({"mcp_servers": [{"server_id": 999999}]}, {"mcp_servers"}),
    ({"services": [{"service_id": 999999}]}, {"services"}),
    ({"mcp_servers": None}, {"mcp_servers"}),
    ({"source": "mcp"}, {"source"}), ({"key_prefix": "vk_x"}, {"key_prefix"}),
    ({"name": "ok", "mcp_servers": [{"server_id": 999999}]}, {"mcp_servers"}),
])
def test_update_invalid_changes_nothing(app, admin_api, servers, services, payload, bad):
    key = new_key(admin_api, "k", expires_at=future(), mcp_servers=[{"server_id": servers[0], "tools": ["t"]}],
                  services=[{"service_id": services[0], "scope": "write"}])
    with unchanged(admin_api, f"/virtual-keys/{key['id']}", "/virtual-keys"):
        assert_error(admin_api.patch(f"/virtual-keys/{key['id']}", json=payload), 422, "validation_failed", bad)
    assert counts(app) == (1, 1, 1)


def test_update_unknown(admin_api):
    assert_error(admin_api.patch("/virtual-keys/999999", json={"name": "x"}), 404, "not_found")


def test_member_cannot_create_or_update_even_own_keys(admin_api, member_api, member_id):
    key = new_key(admin_api, "mine", owner_id=member_id)
    with unchanged(admin_api, "/virtual-keys"):
        assert_error(member_api.post("/virtual-keys", json={"name": "self-made", "owner_id": member_id}), 403)
        assert_error(member_api.patch(f"/virtual-keys/{key['id']}", json={"rate_limit_per_minute": 99999}), 403)


# --- delete -----------------------------------------------------------------------------------

def test_admin_deletes_any_key(app, admin_api, member_id, servers, services):
    key = new_key(admin_api, owner_id=member_id, mcp_servers=[{"server_id": servers[0]}],
                  services=[{"service_id": services[0]}])
    r = admin_api.delete(f"/virtual-keys/{key['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    assert_error(admin_api.get(f"/virtual-keys/{key['id']}"), 404)
    assert counts(app) == (0, 0, 0)
    assert last_event(app).action == "virtual_key.delete"
    # the servers and services themselves stay
    assert admin_api.get(f"/mcp-servers/{servers[0]}").status_code == 200
    assert admin_api.get(f"/services/{services[0]}").status_code == 200


def test_member_deletes_own_key_only(app, admin_api, member_api, member_id):
    mine = new_key(admin_api, "mine", owner_id=member_id)
    theirs = new_key(admin_api, "theirs", owner_id=make_user(app, "other@example.com"))
    unowned = new_key(admin_api, "unowned")
    for key in (theirs, unowned):
        assert_error(member_api.delete(f"/virtual-keys/{key['id']}"), 404, "not_found")
        assert admin_api.get(f"/virtual-keys/{key['id']}").status_code == 200
    assert member_api.delete(f"/virtual-keys/{mine['id']}").status_code == 204
    assert_error(member_api.get(f"/virtual-keys/{mine['id']}"), 404)
    event = last_event(app)
    assert (event.action, event.actor, event.target) == ("virtual_key.delete", "member@example.com", "mine")
    assert count(app, VirtualKey) == 2


def test_delete_unknown(admin_api):
    with unchanged(admin_api, "/virtual-keys"):
        assert_error(admin_api.delete("/virtual-keys/999999"), 404, "not_found")


def test_a_deleted_keys_id_is_never_reused(admin_api):
    """Issued keys name their issuer by id, and caches and rate-limit budgets are keyed by id: a
    new key must never get the id of a deleted one (SQLite reused the highest id by default)."""
    first = admin_api.post("/virtual-keys", json={"name": "one"}).get_json()["id"]
    assert admin_api.delete(f"/virtual-keys/{first}").status_code == 204
    second = admin_api.post("/virtual-keys", json={"name": "two"}).get_json()["id"]
    assert second > first
