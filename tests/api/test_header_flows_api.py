"""The submission of per-user header values over JSON: GET/PUT /api/v1/header-flows/<id> and
DELETE /api/v1/credentials/<id>, from the real auth-required answer to the retried call."""
from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select, update

from app.extensions import db
from app.models import Flow, VirtualKey
from app.models.base import utcnow
from tests.conftest import make_user, token_for
from tests.support.api import admin_api, member_api  # noqa: F401
from tests.support.api import PREFIX, assert_error, check_against_doc
from tests.support.mcp import (ALICE, BOB, SAMPLE, TEAM, TOKEN_HEADER, Rpc, add_key, agent, auth_required, creds,
                               make_server, raw_dump, tool)


def pending(app):
    with app.app_context():
        return [f.id for f in db.session.scalars(select(Flow).where(Flow.status == "pending"))]


def test_user_flow_end_to_end(app, client, urls, member_api, member_id, caplog):
    caplog.set_level(logging.DEBUG)
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    meta = auth_required(rpc)
    path = f"/header-flows/{meta['flow_id']}"
    form = member_api.get(path).get_json()
    assert form["required_header_keys"] == ["x-api-key"] and form["stored_header_keys"] == []
    assert form["server"]["name"] == "keyed"
    assert (form["user"], form["virtual_key"]) == ({"id": member_id, "email": "member@example.com"}, None)
    # wrong value: 422 with the reason, nothing stored, the flow still pending
    err = assert_error(member_api.put(path, json={"headers": {"X-API-KEY": "wrong-" + ALICE}}), 422,
                       "upstream_rejected", {"headers"})
    assert "401" in err["fields"]["headers"]
    assert creds(app) == [] and pending(app) == [meta["flow_id"]]
    assert_error(member_api.put(path, json={"headers": {}}), 400, "bad_request", {"headers"})
    assert_error(member_api.put(path, json={"headers": {"x-other": "v"}}), 400, "bad_request", {"headers"})
    # right value: stored encrypted, flow used
    r = member_api.put(path, json={"headers": {"X-Api-Key": ALICE}})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "active" and r.get_json()["header_keys"] == ["x-api-key"]
    assert creds(app) == [("user", "active", ["x-api-key"])] and pending(app) == []
    assert_error(member_api.get(path), 410, "gone")
    assert_error(member_api.put(path, json={"headers": {"X-Api-Key": ALICE}}), 410, "gone")
    # the retried call reaches the upstream with the person's own value
    assert tool(rpc)["structuredContent"]["x-api-key"] == ALICE
    # canary: never in answers, logs or the raw database
    keys = member_api.get("/virtual-keys")
    assert keys.status_code == 200 and keys.get_json()["virtual_keys"]
    answers = keys.get_data(as_text=True) + r.get_data(as_text=True)
    assert ALICE not in answers + caplog.text + raw_dump(app)
    # revoke: the next call asks again
    cred_id = r.get_json()["id"]
    assert member_api.delete(f"/credentials/{cred_id}").status_code == 204
    assert creds(app) == []
    assert auth_required(rpc)["stored_header_keys"] == []


def test_another_user_gets_403(app, client, urls, member_api, admin_api):
    sid = make_server(app, urls["one"])
    other = make_user(app, "other@example.com")
    rpc = agent(app, client, sid, owner_id=other)
    path = f"/header-flows/{auth_required(rpc)['flow_id']}"
    assert_error(member_api.get(path), 403, "forbidden")
    assert_error(member_api.put(path, json={"headers": {"x-api-key": ALICE}}), 403, "forbidden")
    assert_error(member_api.get("/header-flows/nope"), 404, "not_found")
    assert creds(app) == []


def test_vk_flow_with_the_fragment_token(app, client, urls):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid)
    meta = auth_required(rpc)
    token = meta["submit_url"].split("#t=", 1)[1]
    path = PREFIX + f"/header-flows/{meta['flow_id']}"
    r = client.get(path)
    check_against_doc(app, "GET", path, r)
    assert r.status_code == 401
    r = client.get(path, headers={TOKEN_HEADER: "wrong"})
    check_against_doc(app, "GET", path, r)
    assert r.status_code == 403
    r = client.get(path, headers={TOKEN_HEADER: token})
    check_against_doc(app, "GET", path, r)
    assert r.status_code == 200 and r.get_json()["auth_mode"] == "vk"
    # whose credential it becomes: the key (no owner here), never a person
    key_id = rpc_key_id(app)
    assert (r.get_json()["virtual_key"], r.get_json()["user"]) == ({"id": key_id, "name": "agent", "owner": None}, None)
    r = client.put(path, json={"headers": {"x-api-key": BOB}}, headers={TOKEN_HEADER: token})
    check_against_doc(app, "PUT", path, r)
    assert r.status_code == 200, r.get_json()
    assert tool(rpc)["structuredContent"]["x-api-key"] == BOB
    with app.app_context():
        assert db.session.scalar(select(Flow)).token_hash is None  # the token is gone with the flow


def rpc_key_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(VirtualKey.id))


def test_vk_flow_names_the_key_owner_and_a_session_flow_no_one(app, client, urls, admin_api):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, name="ci-bot")
    meta = auth_required(rpc)
    path, token = PREFIX + f"/header-flows/{meta['flow_id']}", meta["submit_url"].split("#t=", 1)[1]
    # the key gets an owner after the link was made: its vk flow stays, and says whose key it is
    owner = make_user(app, "owner@example.com")
    key_id = rpc_key_id(app)
    assert admin_api.patch(f"/virtual-keys/{key_id}", json={"owner_id": owner}).status_code == 200
    r = client.get(path, headers={TOKEN_HEADER: token})
    check_against_doc(app, "GET", path, r)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["virtual_key"] == {"id": key_id, "name": "ci-bot",
                                           "owner": {"id": owner, "email": "owner@example.com"}}
    # a session flow (anonymous development mode) belongs to no person and no key
    app.config["PORTCULLIS_ENFORCE_AUTH"] = False
    try:
        assert admin_api.patch(f"/mcp-servers/{sid}", json={"allow_on_all_virtual_keys": True}).status_code == 200
        anonymous = Rpc(client)
        anonymous.initialize()
        meta = auth_required(anonymous)
    finally:
        app.config["PORTCULLIS_ENFORCE_AUTH"] = True
    path = PREFIX + f"/header-flows/{meta['flow_id']}"
    r = client.get(path, headers={TOKEN_HEADER: meta["submit_url"].split("#t=", 1)[1]})
    check_against_doc(app, "GET", path, r)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["auth_mode"], r.get_json()["user"], r.get_json()["virtual_key"]) == ("session", None, None)


def test_expired_flow_is_410(app, client, urls, member_api, member_id):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    flow_id = auth_required(rpc)["flow_id"]
    with app.app_context():
        db.session.execute(update(Flow).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert_error(member_api.get(f"/header-flows/{flow_id}"), 410, "gone")
    assert_error(member_api.put(f"/header-flows/{flow_id}", json={"headers": {"x-api-key": ALICE}}), 410, "gone")
    # the agent's next call starts a fresh flow
    assert auth_required(rpc)["flow_id"] != flow_id


def test_key_change_then_resubmit_only_the_new_key(app, client, urls, member_api, member_id, admin_api):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    path = f"/header-flows/{auth_required(rpc)['flow_id']}"
    assert member_api.put(path, json={"headers": {"x-api-key": ALICE}}).status_code == 200
    r = admin_api.patch(f"/mcp-servers/{sid}", json={"url": urls["two"], "per_user_header_keys": ["x-api-key", "x-team"],
                                                     "sample_headers": {"x-api-key": SAMPLE, "x-team": TEAM}})
    assert r.status_code == 200, r.get_json()
    assert creds(app) == [("user", "needs_update", ["x-api-key"])]
    meta = auth_required(rpc)
    assert meta["required_header_keys"] == ["x-api-key", "x-team"] and meta["stored_header_keys"] == ["x-api-key"]
    path = f"/header-flows/{meta['flow_id']}"
    assert member_api.get(path).get_json()["missing_header_keys"] == ["x-team"]
    r = member_api.put(path, json={"headers": {"X-Team": TEAM}})
    assert r.status_code == 200, r.get_json()
    assert creds(app) == [("user", "active", ["x-api-key", "x-team"])]
    seen = tool(rpc)["structuredContent"]
    assert (seen["x-api-key"], seen["x-team"]) == (ALICE, TEAM)


def test_admin_may_revoke_and_delete_cascades(app, client, urls, member_api, member_id, admin_api):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    r = member_api.put(f"/header-flows/{auth_required(rpc)['flow_id']}", json={"headers": {"x-api-key": ALICE}})
    cred_id = r.get_json()["id"]
    other = make_user(app, "x@example.com")
    from tests.conftest import Api

    stranger = Api(client, token_for(app, other))
    assert stranger.delete(f"/credentials/{cred_id}").status_code == 404
    agent(app, client, sid, owner_id=member_id, name="k2")  # a second key of the same member
    assert admin_api.delete(f"/credentials/{cred_id}").status_code == 204
    assert creds(app) == []
    # deleting the server deletes credentials and flows
    r = member_api.put(f"/header-flows/{auth_required(rpc)['flow_id']}", json={"headers": {"x-api-key": ALICE}})
    assert r.status_code == 200
    auth_required(agent(app, client, sid, name="vk-only"))  # a pending vk flow
    assert admin_api.delete(f"/mcp-servers/{sid}").status_code == 204
    assert creds(app) == []
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(Flow)) == 0


def test_a_flow_token_revokes_only_its_own_bindings_credential(app, client, urls, admin_api):
    """DELETE /api/v1/credentials/<id> without an API token: only the token of a pending,
    unexpired flow of that very binding (key and server) may revoke it; anything else is 403
    and deletes nothing."""
    sid, other_sid = make_server(app, urls["one"]), make_server(app, urls["one"], name="other")
    kid, secret = add_key(app, {sid: None, other_sid: None})
    rpc = Rpc(client, secret)
    rpc.initialize()
    first = auth_required(rpc)
    used_token = first["submit_url"].split("#t=", 1)[1]
    r = client.put(PREFIX + f"/header-flows/{first['flow_id']}", json={"headers": {"x-api-key": BOB}},
                   headers={TOKEN_HEADER: used_token})
    assert r.status_code == 200, r.get_json()
    cred_id = r.get_json()["id"]
    path = PREFIX + f"/credentials/{cred_id}"

    def revoke_with(token):
        r = client.delete(path, headers={TOKEN_HEADER: token})
        check_against_doc(app, "DELETE", path, r)
        return r

    def token_of(answer):  # an auth-required answer (submit_url) or a re-authentication (url)
        return answer.get("submit_url", answer.get("url")).split("#t=", 1)[1]

    # tokens of other bindings: the same key on another server, another key on this server
    same_key_other_server = rpc.call("tools/call", {"name": "other__headers", "arguments": {}}).json["result"]
    other_key = auth_required(agent(app, client, sid, name="someone else's key"))
    # while the binding has a live pending flow (re-authenticate), other tokens are still refused
    reauth = admin_api.post(f"/sessions/cred_{cred_id}/reauth")
    assert reauth.status_code == 200, reauth.get_json()
    refused = {"wrong": "not-a-token", "used": used_token,
               "same key, other server": token_of(same_key_other_server["_meta"]["portcullis/auth_required"]),
               "other key, same server": token_of(other_key)}
    for why, token in refused.items():
        assert_error(revoke_with(token), 403, "forbidden")
        assert creds(app) == [("vk", "active", ["x-api-key"])], why
    with app.app_context():
        db.session.execute(update(Flow).where(Flow.id == reauth.get_json()["flow_id"])
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert_error(revoke_with(token_of(reauth.get_json())), 403, "forbidden")  # that flow, once expired
    assert creds(app) == [("vk", "active", ["x-api-key"])]
    assert_error(client.delete(path), 401, "unauthorized")  # no token at all
    # a fresh flow of this binding: its token revokes the credential and the binding's flows
    fresh = admin_api.post(f"/sessions/cred_{cred_id}/reauth")
    assert fresh.status_code == 200, fresh.get_json()
    r = revoke_with(token_of(fresh.get_json()))
    assert r.status_code == 204, r.get_data(as_text=True)
    assert creds(app) == []
    with app.app_context():
        left = {(f.virtual_key_id, f.mcp_server_id) for f in db.session.scalars(select(Flow))}
    assert (kid, sid) not in left and (kid, other_sid) in left  # the other bindings' flows stay


def test_concurrent_submissions_leave_one_row(app, urls, member_id):
    """20 submissions for one binding at once: exactly one credential row."""
    sid = make_server(app, urls["one"])
    add_key(app, {sid: None}, owner_id=member_id)
    with app.app_context():
        from app.credentials.bindings import Binding
        from app.credentials.flows import start as start_flow

        flow_id, _ = start_flow(Binding("user", member_id, sid))
    token = token_for(app, member_id)
    codes = []

    def go():
        c = app.test_client()
        r = c.put(f"/api/v1/header-flows/{flow_id}", json={"headers": {"x-api-key": ALICE}},
                  headers={"Authorization": f"Bearer {token}"})
        codes.append(r.status_code)

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert creds(app) == [("user", "active", ["x-api-key"])]
    assert len(codes) == 20 and set(codes) <= {200, 410} and 200 in codes
