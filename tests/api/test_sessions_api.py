"""GET /api/v1/sessions, POST /api/v1/sessions/<id>/reauth, DELETE /api/v1/sessions/<id>: every
filter and bad parameter, who sees what, hidden superseded flows, re-authentication and revocation,
on the real database (SQLite, or PostgreSQL with TEST_DATABASE_URL). Every answer is checked
against the OpenAPI document by the tests/support/api.py fixtures."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Credential, Flow, McpServer
from app.models.base import utcnow
from tests.conftest import Api, token_for
from tests.support.api import admin_api, member_api  # noqa: F401
from tests.support.api import CheckedApi, assert_error, audit_actions, count
from tests.support.mcp import CANARY, T0


@pytest.fixture
def other_api(app, client, world, upstreams):
    return CheckedApi(Api(client, token_for(app, world.other_id)), upstreams["alpha"])


def ids(resp) -> list[str]:
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["count"] == len(body["sessions"])
    return [r["id"] for r in body["sessions"]]


def listing(api, query="") -> list[str]:
    return ids(api.get("/sessions" + (f"?{query}" if query else "")))


# --- listing and visibility -----------------------------------------------------------------

def test_admin_sees_every_row_newest_first(admin_api, world):
    r = admin_api.get("/sessions")
    assert r.status_code == 200
    body = r.get_json()
    w = world
    assert [x["id"] for x in body["sessions"]] == [
        w.fid("bot_jira"), w.fid("member_linear"), w.cid("member_linear"), w.cid("session_github"),
        w.cid("memberkey_jira"), w.cid("bot_linear"), w.cid("other_github"), w.cid("member_github")]
    assert (body["total_count"], body["count"], body["limit"], body["offset"]) == (8, 8, 50, 0)
    rows = {x["id"]: x for x in body["sessions"]}
    assert rows[w.cid("member_github")] == {
        "id": w.cid("member_github"), "kind": "credential", "auth_kind": "headers", "auth_mode": "user",
        "user": {"id": w.member_id, "email": "member@example.com"}, "virtual_key": None, "session_id": None,
        "server": {"id": w.servers["github"], "name": "github"}, "status": "active", "header_keys": ["x-api-key"],
        "scopes": None,
        "created_at": "2030-01-01T12:01:00Z", "updated_at": "2030-01-01T12:01:00Z", "expires_at": None,
        "can_reauth": False}  # an admin cannot submit as another person
    assert rows[w.cid("bot_linear")]["virtual_key"] == {"id": w.keys["ci-bot"], "name": "ci-bot"}
    assert rows[w.cid("bot_linear")]["user"] is None and rows[w.cid("bot_linear")]["can_reauth"] is True
    assert rows[w.cid("session_github")]["session_id"] == w.session
    assert rows[w.cid("session_github")]["can_reauth"] is True
    assert rows[w.cid("memberkey_jira")]["can_reauth"] is False  # orphaned
    flow = rows[w.fid("bot_jira")]
    assert (flow["kind"], flow["status"], flow["can_reauth"]) == ("flow", "pending", False)
    assert flow["expires_at"] is not None and flow["header_keys"] == ["x-api-key"]
    assert CANARY not in r.get_data(as_text=True)


def test_member_sees_own_user_rows_and_keys_they_own(member_api, world):
    w = world
    body = member_api.get("/sessions").get_json()
    assert [x["id"] for x in body["sessions"]] == [
        w.fid("member_linear"), w.cid("member_linear"), w.cid("memberkey_jira"), w.cid("member_github")]
    assert body["total_count"] == 4
    rows = {x["id"]: x for x in body["sessions"]}
    assert rows[w.cid("member_github")]["can_reauth"] is True  # their own
    assert rows[w.cid("member_linear")]["can_reauth"] is True
    assert rows[w.cid("memberkey_jira")]["can_reauth"] is False  # orphaned


def test_another_member_sees_only_their_own(other_api, world):
    assert listing(other_api) == [world.cid("other_github")]  # the expired flow is not a session


def test_without_a_token_401(app, client, world):
    r = client.get("/api/v1/sessions")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"


def test_superseded_flow_appears_once_the_credential_is_not_active(app, admin_api, member_api, world):
    w = world
    assert w.fid("member_github") not in listing(admin_api)
    with app.app_context():
        db.session.get(Credential, w.creds["member_github"]).status = "needs_update"
        db.session.commit()
    assert w.fid("member_github") in listing(admin_api)
    assert w.fid("member_github") in listing(member_api)
    assert listing(member_api, "kind=flow") == [w.fid("member_github"), w.fid("member_linear")]


def test_used_and_expired_flows_are_not_listed(admin_api, world):
    everything = listing(admin_api, "limit=500")
    assert world.fid("other_jira_expired") not in everything and world.fid("member_jira_used") not in everything


# --- filters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("status=active", ["session_github", "bot_linear", "member_github"]),
    ("status=pending", ["f:bot_jira", "f:member_linear"]),
    ("status=needs_update,orphaned", ["member_linear", "memberkey_jira", "other_github"]),
    ("status=needs_update&status=pending", ["f:bot_jira", "f:member_linear", "member_linear", "other_github"]),
    ("status=needs_reauth", []),
    ("auth_mode=vk", ["f:bot_jira", "memberkey_jira", "bot_linear"]),
    ("auth_mode=user,session", ["f:member_linear", "member_linear", "session_github", "other_github",
                                "member_github"]),
    ("auth_kind=headers", ["f:bot_jira", "f:member_linear", "member_linear", "session_github", "memberkey_jira",
                           "bot_linear", "other_github", "member_github"]),
    ("auth_kind=oauth", []),
    ("kind=flow", ["f:bot_jira", "f:member_linear"]),
    ("kind=credential,flow&status=active", ["session_github", "bot_linear", "member_github"]),
    ("kind=credential&auth_mode=user", ["member_linear", "other_github", "member_github"]),
    ("server_id={jira}", ["f:bot_jira", "memberkey_jira"]),
    ("server_id={jira},{linear}", ["f:bot_jira", "f:member_linear", "member_linear", "memberkey_jira", "bot_linear"]),
    ("server_id={plain}", []),
    ("server_id=999999", []),
    ("server_id={github}&status=active&auth_mode=user", ["member_github"]),
    ("status=", ["f:bot_jira", "f:member_linear", "member_linear", "session_github", "memberkey_jira",
                 "bot_linear", "other_github", "member_github"]),  # empty: no filter
])
def test_filters(admin_api, world, query, expected):
    query = query.format(**world.servers)
    want = [world.fid(e[2:]) if e.startswith("f:") else world.cid(e) for e in expected]
    r = admin_api.get("/sessions?" + query)
    assert ids(r) == want, query
    assert r.get_json()["total_count"] == len(want)


@pytest.mark.parametrize("q, expected", [
    ("git", ["session_github", "other_github", "member_github"]),
    ("GitHub", ["session_github", "other_github", "member_github"]),
    ("other@EXAMPLE", ["other_github"]),
    ("member@", ["f:member_linear", "member_linear", "member_github"]),
    ("ci-b", ["f:bot_jira", "bot_linear"]),
    ("member-key", ["memberkey_jira"]),
    ("{ci_bot_id}", ["f:bot_jira", "bot_linear"]),  # a key id, exactly
    ("mcp-session-abcdef0123456789", ["session_github"]),  # a session id, exactly
    ("mcp-session", []),  # ... not a part of one
    ("{row_id}", ["bot_linear"]),  # a row id
    ("flow_flowBotJira", ["f:bot_jira"]),
    ("cred_0", []),
    ("%", []),  # LIKE wildcards are literal
    ("_", []),
    ("nothing-like-this", []),
])
def test_search(admin_api, world, q, expected):
    q = q.format(ci_bot_id=world.keys["ci-bot"], row_id=world.cid("bot_linear"))
    want = [world.fid(e[2:]) if e.startswith("f:") else world.cid(e) for e in expected]
    r = admin_api.get("/sessions", query_string={"q": q})
    assert ids(r) == want, q
    assert r.get_json()["total_count"] == len(want)


def test_search_and_filters_respect_visibility(member_api, world):
    assert listing(member_api, "q=other") == []
    assert listing(member_api, "q=ci-bot") == []
    assert listing(member_api, f"q={world.session}") == []
    assert listing(member_api, "auth_mode=session") == []
    assert listing(member_api, "q=github") == [world.cid("member_github")]


def test_pagination(admin_api, world):
    everything = listing(admin_api)
    pages = []
    for offset in range(0, 10, 3):
        body = admin_api.get(f"/sessions?limit=3&offset={offset}").get_json()
        assert (body["limit"], body["offset"], body["total_count"]) == (3, offset, 8)
        assert body["count"] == len(body["sessions"]) == min(3, max(0, 8 - offset))
        pages += [x["id"] for x in body["sessions"]]
    assert pages == everything
    body = admin_api.get("/sessions?limit=2&offset=1&status=active,pending").get_json()
    assert [x["id"] for x in body["sessions"]] == [world.fid("member_linear"), world.cid("session_github")]
    assert body["total_count"] == 5
    assert listing(admin_api, "offset=100") == []


def test_ties_on_created_at_are_ordered_stably(app, admin_api, world):
    with app.app_context():
        for cred in db.session.scalars(select(Credential)):
            cred.created_at = T0
        for flow in db.session.scalars(select(Flow)):
            flow.created_at = T0
        db.session.commit()
    first = listing(admin_api)
    assert len(first) == 8
    paged = listing(admin_api, "limit=3") + listing(admin_api, "limit=3&offset=3") + listing(admin_api, "limit=3&offset=6")
    assert paged == first


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"), ("limit=-1", "limit"), ("limit=1.5", "limit"),
    ("offset=-1", "offset"), ("offset=x", "offset"),
    ("status=bogus", "status"), ("status=active,", "status"), ("status=ACTIVE", "status"),
    ("status=active,used", "status"),
    ("auth_mode=admin", "auth_mode"), ("auth_mode=user,,vk", "auth_mode"),
    ("auth_kind=saml", "auth_kind"), ("kind=credentials", "kind"),
    ("server_id=0", "server_id"), ("server_id=abc", "server_id"), ("server_id=1.5", "server_id"),
    ("server_id=-3", "server_id"), ("server_id=1,x", "server_id"), ("server_id=99999999999", "server_id"),
    ("q=" + "x" * 201, "q"), ("q=a%00b", "q"),
])
def test_bad_parameters_are_400(app, admin_api, world, query, field):
    before = audit_actions(app)
    err = assert_error(admin_api.get("/sessions?" + query), 400, "bad_request", {field})
    assert field in err["message"]
    assert audit_actions(app) == before


def test_several_bad_parameters_are_named_together(admin_api, world):
    assert_error(admin_api.get("/sessions?limit=0&status=x&server_id=y"), 400, "bad_request",
                 {"limit", "status", "server_id"})


# --- re-authentication --------------------------------------------------------------------------

def _flows_of(app, **binding):
    with app.app_context():
        return [(f.id, f.status) for f in db.session.scalars(select(Flow).filter_by(**binding))]


def test_member_reauths_their_own_credential(app, member_api, world):
    w = world
    r = member_api.post(f"/sessions/{w.cid('member_github')}/reauth")
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["url"].endswith(f"/connect/{out['flow_id']}") and "#t=" not in out["url"]  # user flows: no token
    # the binding's pending flow was refreshed, not duplicated
    assert out["flow_id"] == "flowMemberGithub"
    assert _flows_of(app, auth_mode="user", user_id=w.member_id, mcp_server_id=w.servers["github"]) == [
        ("flowMemberGithub", "pending")]
    with app.app_context():
        flow = db.session.get(Flow, out["flow_id"])
        assert flow.expires_at > utcnow() + timedelta(minutes=14)
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "session.reauth"))
        assert event.actor == "member@example.com" and event.target_type == "credentials"
        assert event.target_id == w.creds["member_github"] and CANARY not in event.detail + event.target
    # a credential without a pending flow gets a new one
    r = member_api.post(f"/sessions/{w.cid('member_linear')}/reauth")
    assert r.status_code == 200 and r.get_json()["flow_id"] == "flowMemberLinear"
    assert audit_actions(app).count("session.reauth") == 2


def test_reauth_of_a_vk_row_gives_a_tokened_link(app, admin_api, world):
    w = world
    r = admin_api.post(f"/sessions/{w.cid('bot_linear')}/reauth")
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert "#t=" in out["url"] and f"/connect/{out['flow_id']}#t=" in out["url"]
    assert _flows_of(app, auth_mode="vk", virtual_key_id=w.keys["ci-bot"], mcp_server_id=w.servers["linear"]) == [
        (out["flow_id"], "pending")]
    # session rows (development mode) too
    r = admin_api.post(f"/sessions/{w.cid('session_github')}/reauth")
    assert r.status_code == 200 and "#t=" in r.get_json()["url"]


@pytest.mark.parametrize("who, label, status", [
    ("admin", "member_github", 403),     # another person's user row: an admin cannot submit as them
    ("member", "memberkey_jira", 403),   # orphaned
    ("admin", "memberkey_jira", 403),
    ("member", "f:member_linear", 403),  # a flow
    ("admin", "f:bot_jira", 403),
    ("member", "other_github", 404),     # not theirs: not found
    ("member", "bot_linear", 404),
    ("member", "session_github", 404),
    ("member", "f:bot_jira", 404),
    ("member", "f:member_github", 404),  # superseded: not a session
    ("admin", "f:other_jira_expired", 404),
    ("admin", "f:member_jira_used", 404),
])
def test_reauth_refused(app, admin_api, member_api, world, who, label, status):
    api = admin_api if who == "admin" else member_api
    row = world.fid(label[2:]) if label.startswith("f:") else world.cid(label)
    flows_before = _flows_of(app)
    assert_error(api.post(f"/sessions/{row}/reauth"), status, "forbidden" if status == 403 else "not_found")
    assert _flows_of(app) == flows_before
    assert "session.reauth" not in audit_actions(app)


def test_reauth_when_the_server_no_longer_takes_header_credentials(app, member_api, world):
    with app.app_context():
        server = db.session.get(McpServer, world.servers["github"])
        server.auth_type, server.per_user_header_keys = "none", []
        db.session.commit()
    row = next(x for x in member_api.get("/sessions").get_json()["sessions"] if x["id"] == world.cid("member_github"))
    assert row["can_reauth"] is False
    assert_error(member_api.post(f"/sessions/{world.cid('member_github')}/reauth"), 403, "forbidden")


@pytest.mark.parametrize("row_id", ["abc", "cred_", "cred_abc", "cred_0", "cred_01", "cred_999999",
                                    "cred_99999999999999", "flow_", "flow_nope", "1", "flow_" + "x" * 65,
                                    "flow_a%00b", "flow_a%20b", "cred_%C2%B2", "flow_flowBotJira%00"])
def test_unknown_ids_are_404(admin_api, world, row_id):
    assert_error(admin_api.post(f"/sessions/{row_id}/reauth"), 404, "not_found")
    assert_error(admin_api.delete(f"/sessions/{row_id}"), 404, "not_found")


# --- revocation ---------------------------------------------------------------------------------

def test_member_revokes_a_credential_and_its_pending_flow(app, member_api, world):
    w = world
    assert member_api.delete(f"/sessions/{w.cid('member_linear')}").status_code == 204
    with app.app_context():
        assert db.session.get(Credential, w.creds["member_linear"]) is None
        assert db.session.get(Flow, w.flows["member_linear"]) is None  # the binding's pending flow went first
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "session.revoke"))
        assert event.actor == "member@example.com" and event.target_id == w.creds["member_linear"]
        assert CANARY not in event.detail
    assert listing(member_api) == [w.cid("memberkey_jira"), w.cid("member_github")]
    assert_error(member_api.delete(f"/sessions/{w.cid('member_linear')}"), 404, "not_found")
    # keys they own: vk rows too
    assert member_api.delete(f"/sessions/{w.cid('memberkey_jira')}").status_code == 204
    assert listing(member_api) == [w.cid("member_github")]


def test_revoking_a_credential_also_removes_a_hidden_pending_flow(app, admin_api, world):
    assert admin_api.delete(f"/sessions/{world.cid('member_github')}").status_code == 204
    with app.app_context():
        assert db.session.get(Flow, world.flows["member_github"]) is None


def test_revoking_a_flow_leaves_the_credentials(app, admin_api, world):
    w = world
    n = count(app, Credential)
    assert admin_api.delete(f"/sessions/{w.fid('bot_jira')}").status_code == 204
    assert count(app, Credential) == n
    with app.app_context():
        assert db.session.get(Flow, w.flows["bot_jira"]) is None
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "session.revoke"))
        assert event.target_type == "flows" and event.target_id is None and "ci-bot" in event.detail
    assert w.fid("bot_jira") not in listing(admin_api)


@pytest.mark.parametrize("who, label", [
    ("member", "other_github"), ("member", "bot_linear"), ("member", "session_github"), ("member", "f:bot_jira"),
    ("member", "f:member_github"),  # superseded: not a session
    ("other", "member_github"), ("other", "memberkey_jira"), ("other", "f:member_linear"),
    ("admin", "f:other_jira_expired"), ("admin", "f:member_jira_used"),
])
def test_revoke_of_what_the_caller_cannot_see_is_404(app, admin_api, member_api, other_api, world, who, label):
    api = {"admin": admin_api, "member": member_api, "other": other_api}[who]
    row = world.fid(label[2:]) if label.startswith("f:") else world.cid(label)
    creds_before, flows_before = count(app, Credential), _flows_of(app)
    assert_error(api.delete(f"/sessions/{row}"), 404, "not_found")
    assert (count(app, Credential), _flows_of(app)) == (creds_before, flows_before)
    assert "session.revoke" not in audit_actions(app)


def test_admin_revokes_anything(app, admin_api, world):
    for label in ("member_github", "other_github", "bot_linear", "memberkey_jira", "session_github", "member_linear"):
        assert admin_api.delete(f"/sessions/{world.cid(label)}").status_code == 204, label
    assert listing(admin_api) == [world.fid("bot_jira")]
    assert admin_api.delete(f"/sessions/{world.fid('bot_jira')}").status_code == 204
    assert listing(admin_api) == []
    assert audit_actions(app).count("session.revoke") == 7
    with app.app_context():
        details = " ".join(e.detail + e.target for e in db.session.scalars(select(AuditEvent)))
    assert CANARY not in details


def test_many_matching_ids_fall_back_to_subqueries(admin_api, member_api, world, monkeypatch):
    """Search and member visibility resolve small id lists up front (so the planner can use the
    binding indexes); past MAX_INLINE_IDS they stay subqueries, with the same answers."""
    from app.ops import connections as ops

    inline = {q: listing(admin_api, f"q={q}") for q in ("example", "key", "git")}
    own = listing(member_api)
    monkeypatch.setattr(ops, "MAX_INLINE_IDS", 0)
    assert {q: listing(admin_api, f"q={q}") for q in inline} == inline
    assert listing(member_api) == own
    assert inline["example"] and inline["key"] and inline["git"]
