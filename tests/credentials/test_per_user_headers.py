"""per_user_headers servers: verification with sample values on create and update (the values
are never stored, logged or echoed), key-set changes turn credentials to needs_update."""
from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from app.extensions import db
from app.credentials.store import headers_for as upstream_headers
from app.models import AuditEvent, Credential, McpServer
from tests.support.api import admin_api  # noqa: F401
from tests.support.api import assert_error, count
from tests.support.mcp import keyed_upstreams, raw_dump

SAMPLE = "sample-canary-9b2e71"
ALICE = "alice-canary-31c4d0"
BOB = "bob-canary-77ad19"
TEAM = "team-canary-5e0f2a"


@pytest.fixture(scope="module")
def keyed():
    """An upstream that needs X-Api-Key (any of three values), and one that also needs X-Team."""
    with keyed_upstreams(SAMPLE, ALICE, BOB, TEAM) as urls:
        yield urls


def make(admin_api, url, **fields):
    return admin_api.post("/mcp-servers", json={"name": "keyed", "url": url, "auth_type": "per_user_headers",
                                                "per_user_header_keys": ["X-Api-Key"], **fields})


def test_create_verifies_with_samples_and_discards_them(app, admin_api, keyed, caplog):
    caplog.set_level(logging.DEBUG)
    r = make(admin_api, keyed["one"], sample_headers={"x-API-key": SAMPLE})
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert {t["name"] for t in body["tools"]} >= {"echo", "headers"} and body["tools_refreshed_at"]
    everything = raw_dump(app) + r.get_data(as_text=True) + caplog.text \
        + admin_api.get("/audit-events?limit=500").get_data(as_text=True)
    assert SAMPLE not in everything


def test_create_with_wrong_samples_stores_nothing(app, admin_api, keyed, caplog):
    caplog.set_level(logging.DEBUG)
    r = make(admin_api, keyed["one"], sample_headers={"X-Api-Key": "wrong-" + SAMPLE})
    err = assert_error(r, 422, "validation_failed", {"sample_headers"})
    assert "401" in err["fields"]["sample_headers"]
    assert count(app, McpServer) == 0
    assert SAMPLE not in raw_dump(app) + r.get_data(as_text=True) + caplog.text


@pytest.mark.parametrize("samples,why", [
    (None, "every per-user key"), ({}, "missing"), ({"x-api-key": SAMPLE, "x-other": "v"}, "not per-user keys"),
    ({"x-api-key": ""}, "non-empty"), ({"x-api-key": "a\nb"}, "printable ASCII"), ("x", "object"),
    ({"X-Api-Key": SAMPLE, "x-api-key": SAMPLE}, "more than once"),
])
def test_samples_are_required_and_checked(app, admin_api, keyed, samples, why):
    fields = {} if samples is None else {"sample_headers": samples}
    err = assert_error(make(admin_api, keyed["one"], **fields), 422, "validation_failed", {"sample_headers"})
    assert why in err["fields"]["sample_headers"]
    assert count(app, McpServer) == 0


def test_samples_only_for_per_user_headers(admin_api, keyed):
    r = admin_api.post("/mcp-servers", json={"name": "x", "url": keyed["one"], "auth_type": "none",
                                             "sample_headers": {"x": "y"}})
    assert_error(r, 422, "validation_failed", {"sample_headers"})


def test_two_headers(app, admin_api, keyed):
    assert_error(make(admin_api, keyed["two"], per_user_header_keys=["X-Api-Key", "X-Team"],
                      sample_headers={"x-api-key": SAMPLE}), 422, "validation_failed", {"sample_headers"})
    r = make(admin_api, keyed["two"], per_user_header_keys=["X-Api-Key", "X-Team"],
             sample_headers={"x-api-key": SAMPLE, "x-team": TEAM})
    assert r.status_code == 201 and r.get_json()["tools"]


def test_per_user_values_win_over_shared_headers():
    headers = dict(upstream_headers({"X-API-KEY": "shared", "X-Team": "t"}, ["x-api-key"], {"x-api-key": "mine"}))
    assert headers == {"X-Team": "t", "x-api-key": "mine"}


def _credential(app, server_id, status="active"):
    from tests.conftest import make_user

    from tests.support.mcp import add_key

    uid = make_user(app, f"u{status}@example.com")
    if status != "orphaned":  # an active credential needs a granted binding (or it is orphaned at once)
        add_key(app, {server_id: None}, owner_id=uid)
    with app.app_context():
        db.session.add(Credential(auth_mode="user", user_id=uid, mcp_server_id=server_id, status=status,
                                  values={"x-api-key": ALICE}, header_keys=["x-api-key"]))
        db.session.commit()


def statuses(app):
    with app.app_context():
        return sorted(c.status for c in db.session.scalars(select(Credential)))


def test_key_change_turns_active_credentials_to_needs_update(app, admin_api, keyed):
    server = make(admin_api, keyed["one"], sample_headers={"x-api-key": SAMPLE}).get_json()
    path = f"/mcp-servers/{server['id']}"
    _credential(app, server["id"])
    _credential(app, server["id"], status="orphaned")
    # not a real change (case, order, spacing): nothing flips, no samples needed
    assert admin_api.patch(path, json={"per_user_header_keys": [" x-API-KEY "]}).status_code == 200
    assert statuses(app) == ["active", "orphaned"]
    # a real change needs samples for the new set, verified at the upstream
    assert_error(admin_api.patch(path, json={"per_user_header_keys": ["x-api-key", "x-team"]}), 422,
                 "validation_failed", {"sample_headers"})
    assert_error(admin_api.patch(path, json={"per_user_header_keys": ["x-api-key", "x-team"], "url": keyed["two"],
                                             "sample_headers": {"x-api-key": SAMPLE, "x-team": "wrong"}}),
                 422, "validation_failed", {"sample_headers"})
    assert statuses(app) == ["active", "orphaned"]  # a failed update flips nothing
    r = admin_api.patch(path, json={"per_user_header_keys": ["x-api-key", "x-team"], "url": keyed["two"],
                                    "sample_headers": {"x-api-key": SAMPLE, "X-Team": TEAM}})
    assert r.status_code == 200 and r.get_json()["per_user_header_keys"] == ["x-api-key", "x-team"]
    assert statuses(app) == ["needs_update", "orphaned"]
    with app.app_context():
        assert "credential.needs_update" in [e.action for e in db.session.scalars(select(AuditEvent))]
    assert SAMPLE not in raw_dump(app) and TEAM not in raw_dump(app)


def test_url_change_needs_samples(admin_api, keyed):
    server = make(admin_api, keyed["one"], sample_headers={"x-api-key": SAMPLE}).get_json()
    path = f"/mcp-servers/{server['id']}"
    assert_error(admin_api.patch(path, json={"url": keyed["two"]}), 422, "validation_failed", {"sample_headers"})
    assert admin_api.patch(path, json={"read_timeout": 10}).status_code == 200  # no samples for that
