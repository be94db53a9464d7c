"""OAuth access tokens on /mcp: the caller each consent mode gives, the 401/403 challenges,
revocation taking effect at once, MCP sessions that belong to one identity, the session gate,
and the authorization modes (any / oauth / keys). Real upstream MCP servers; tokens from the
real authorization server (tests/support/oauth.py), or forged with its key where a test needs a
token the server would never issue."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from joserfc import jwt
from sqlalchemy import update

from app.extensions import db
from app.models import Login, OAuthConsent
from app.models.base import utcnow
from app.oauth_server import keys
from tests.conftest import make_user
from tests.support.mcp import Rpc, add_key, add_server
from tests.support.oauth import BASE, MCP, register, tokens_for
from tests.support.web import Web

PRM = BASE + "/.well-known/oauth-protected-resource/mcp"


@pytest.fixture
def servers(app, upstreams):
    return {"alpha": add_server(app, "alpha", upstreams["alpha"]),
            "gamma": add_server(app, "gamma", upstreams["alpha"])}


@pytest.fixture
def member(client, member_id) -> Web:
    return Web(client).login("member@example.com")


def tool_names(rpc) -> set[str]:
    r = rpc.call("tools/list")
    assert r.status_code == 200, r.get_data(as_text=True)
    return {t["name"] for t in r.json["result"]["tools"]}


def session_rpc(client, token, path="/mcp") -> Rpc:
    rpc = Rpc(client, token, path)
    rpc.initialize()
    return rpc


def test_user_mode_sees_the_union_of_the_persons_keys(app, client, member, member_id, servers):
    add_key(app, {servers["alpha"]: ["echo"]}, name="one", owner_id=member_id)
    add_key(app, {servers["gamma"]: None}, name="two", owner_id=member_id)
    add_key(app, {servers["alpha"]: None}, name="revoked", owner_id=member_id, active=False)
    _, tok = tokens_for(client, member)
    rpc = session_rpc(client, tok["access_token"])
    names = tool_names(rpc)
    assert "alpha__echo" in names and "alpha__weather" not in names  # only what a usable key allows
    assert "gamma__weather" in names
    r = rpc.call("tools/call", {"name": "alpha__echo", "arguments": {"text": "as me"}})
    assert r.json["result"]["content"][0]["text"] == "as me"


def test_vk_mode_sees_exactly_that_key(app, client, member, member_id, servers):
    key_id, _ = add_key(app, {servers["alpha"]: None}, name="laptop", owner_id=member_id)
    add_key(app, {servers["gamma"]: None}, name="other", owner_id=member_id)
    _, tok = tokens_for(client, member, mode="vk", key_id=key_id)
    rpc = session_rpc(client, tok["access_token"])
    names = tool_names(rpc)
    assert "alpha__echo" in names and not any(n.startswith("gamma__") for n in names)
    with app.app_context():
        from app.ops.keys import get_key, revoke_key

        revoke_key(get_key(key_id))
        db.session.commit()
    r = rpc.call("tools/list")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_revoking_the_consent_rejects_its_access_token_at_once(app, client, member, member_id, servers):
    add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)
    rpc = session_rpc(client, tok["access_token"])
    assert tool_names(rpc)
    with app.app_context():
        consent = db.session.scalar(db.select(OAuthConsent))
        from app.oauth_server.consents import revoke

        revoke(consent, "test")
        db.session.commit()
    r = rpc.call("tools/list")
    assert r.status_code == 401 and "revoked" in r.json["error"]["message"]


def test_every_401_points_at_the_endpoints_metadata(app, client, servers):
    for path, prm in (("/mcp", PRM), ("/mcp/alpha", PRM + "/alpha"), ("/mcp/unknown-one", PRM + "/unknown-one")):
        r = Rpc(client, None, path).call("tools/list")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{prm}", scope="mcp"'
        r = Rpc(client, "vk_" + "x" * 43, path).call("tools/list")
        assert r.status_code == 401 and f'resource_metadata="{prm}"' in r.headers["WWW-Authenticate"]


def test_a_token_for_another_endpoint_is_refused(app, client, member, member_id, servers):
    add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)  # aud: /mcp
    r = Rpc(client, tok["access_token"], "/mcp/alpha").call("tools/list")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert f'resource_metadata="{PRM}/alpha"' in r.headers["WWW-Authenticate"]
    app_client = register(client)
    from tests.support.oauth import code_for, exchange

    code, verifier = code_for(member, app_client["client_id"], resource=MCP + "/alpha")
    named = exchange(client, app_client["client_id"], code, verifier).get_json()["access_token"]
    assert tool_names(session_rpc(client, named, "/mcp/alpha")) >= {"echo", "weather"}


def test_a_token_in_the_query_string_is_refused(client, member):
    _, tok = tokens_for(client, member)
    rpc = Rpc(client, None, "/mcp?access_token=" + tok["access_token"])
    assert rpc.call("tools/list").status_code == 401


def forged(app, **changes) -> str:
    now = int(time.time())
    with app.app_context():
        kid, key = keys.cache().signing_key()
        consent = db.session.scalar(db.select(OAuthConsent))
    claims = {"iss": BASE, "sub": str(consent.user_id), "aud": MCP, "exp": now + 600, "iat": now, "jti": "j",
              "client_id": "c", "scope": "mcp", "portcullis_mode": consent.mode, "portcullis_grant": consent.id,
              "sid": str(consent.login_id), **changes}
    return jwt.encode({"alg": "RS256", "kid": kid}, {k: v for k, v in claims.items() if v is not None}, key)


def test_a_token_without_the_mcp_scope_is_403(app, client, member):
    tokens_for(client, member)
    r = Rpc(client, forged(app, scope="profile")).call("tools/list")
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


def test_claims_must_match_the_consent(app, client, member, member_id):
    tokens_for(client, member)
    other = make_user(app, "other@example.com")
    for changes in ({"sub": str(other)}, {"portcullis_mode": "session"}, {"portcullis_grant": 999}):
        r = Rpc(client, forged(app, **changes)).call("tools/list")
        assert r.status_code == 401, changes


def test_a_deactivated_person_s_token_is_refused(app, client, member, member_id, servers, admin_api):
    add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)
    assert admin_api.patch(f"/users/{member_id}", json={"active": False}).status_code == 200
    assert Rpc(client, tok["access_token"]).call("tools/list").status_code == 401


def test_an_mcp_session_belongs_to_one_identity(app, client, member, member_id, servers):
    """Two people signed in through two clients: the session id of one is unknown to the
    other, as it is to a key and to an anonymous caller."""
    add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    other_id = make_user(app, "other@example.com")
    add_key(app, {servers["alpha"]: None}, owner_id=other_id)
    _, mine = tokens_for(client, member)
    member.post("/logout")
    other = Web(client).login("other@example.com")
    _, theirs = tokens_for(client, other)
    _, key = add_key(app, {servers["alpha"]: None})
    rpc = session_rpc(client, mine["access_token"])
    for stranger in (theirs["access_token"], key, None):
        intruder = Rpc(client, stranger)
        intruder.session = rpc.session
        r = intruder.call("tools/list")
        assert r.status_code in (401, 404), r.status_code
        if stranger is not None:
            assert r.status_code == 404
    assert rpc.call("tools/list").status_code == 200


def test_session_gate_blocks_new_flows_once_the_login_ended(app, client, member, member_id, keyed_server):
    add_key(app, {keyed_server: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)
    rpc = session_rpc(client, tok["access_token"])
    r = rpc.call("tools/call", {"name": "keyed__echo", "arguments": {"text": "x"}})
    assert r.status_code == 200 and r.json["result"]["_meta"]["portcullis/auth_required"]["kind"] == "headers"
    with app.app_context():  # the consenting login expires (no logout: refresh tokens stay)
        db.session.execute(update(Login).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    r = rpc.call("tools/call", {"name": "keyed__echo", "arguments": {"text": "x"}})
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge and "sign-in session" in challenge


@pytest.fixture
def keyed_server(app, upstreams):
    from app.ops.servers import create_server
    from tests.support.mcp import start_upstream, stop

    proc, url = start_upstream("--name", "keyed", "--require-header", "X-Api-Key=sample-1")
    with app.app_context():
        server = create_server({"name": "keyed", "url": url, "auth_type": "per_user_headers",
                                "per_user_header_keys": ["X-Api-Key"], "sample_headers": {"x-api-key": "sample-1"}})
        db.session.commit()
        sid = server.id
    yield sid
    stop(proc)


def test_strict_oauth_mode_refuses_virtual_keys(app, client, member, member_id, servers):
    _, key = add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)
    app.config["PORTCULLIS_MCP_AUTH"] = "oauth"
    try:
        r = Rpc(client, key).call("tools/list")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith(
            f'Bearer resource_metadata="{PRM}"')
        assert tool_names(session_rpc(client, tok["access_token"]))
    finally:
        app.config["PORTCULLIS_MCP_AUTH"] = "any"


def test_keys_mode_refuses_tokens(app, client, member, member_id, servers):
    _, key = add_key(app, {servers["alpha"]: None}, owner_id=member_id)
    _, tok = tokens_for(client, member)
    app.config["PORTCULLIS_MCP_AUTH"] = "keys"
    try:
        r = Rpc(client, tok["access_token"]).call("tools/list")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="portcullis"'
        assert tool_names(session_rpc(client, key))
    finally:
        app.config["PORTCULLIS_MCP_AUTH"] = "any"


def test_request_key_in_user_mode_is_cut_to_one_of_the_persons_keys(app, client, member, member_id):
    with app.app_context():
        from app.ops.services import create_service

        svc = create_service({"name": "weather", "base_url": "http://127.0.0.1:9/api", "secret": "s3cret"})
        db.session.commit()
        sid = svc.id
    add_key(app, name="reader", owner_id=member_id, services=[{"service_id": sid, "scope": "read"}],
            rate_limit_per_minute=30)
    writer_id, _ = add_key(app, name="writer", owner_id=member_id, services=[{"service_id": sid, "scope": "write"}],
                           rate_limit_per_minute=10)
    _, tok = tokens_for(client, member)
    rpc = session_rpc(client, tok["access_token"])
    listed = rpc.call("tools/call", {"name": "portcullis__list_services", "arguments": {}}).json["result"]
    assert listed["structuredContent"]["services"][0]["scope"] == "write"
    issued = rpc.call("tools/call", {"name": "portcullis__request_key",
                                     "arguments": {"service_name": "weather"}}).json["result"]
    assert not issued.get("isError"), issued
    out = issued["structuredContent"]
    assert out["scope"] == "write" and out["rate_limit_per_minute"] == 10  # the writer key issued it
    with app.app_context():
        from app.models import VirtualKey

        row = db.session.get(VirtualKey, out["key_id"])
        assert row.agent_id == f"vk:{writer_id}" and row.owner_id == member_id and row.source == "mcp"
    too_much = rpc.call("tools/call", {"name": "portcullis__request_key",
                                       "arguments": {"service_name": "weather", "rate_limit": 11}}).json["result"]
    assert too_much["isError"]


def test_two_people_through_two_clients_use_their_own_credentials(app, client, member_id):
    """Each person's token reaches the upstream with that person's own stored value, never the
    other's (per_user_headers: user bindings)."""
    from app.models import Credential
    from tests.support.mcp import start_upstream, stop

    proc, url = start_upstream("--name", "keyed", "--require-header", "X-Api-Key=sample-2",
                               "--require-header", "X-Api-Key=ada-value", "--require-header", "X-Api-Key=bob-value")
    try:
        with app.app_context():
            from app.ops.servers import create_server

            server = create_server({"name": "keyed", "url": url, "auth_type": "per_user_headers",
                                    "per_user_header_keys": ["X-Api-Key"], "sample_headers": {"x-api-key": "sample-2"}})
            db.session.commit()
            sid = server.id
        bob_id = make_user(app, "bob@example.com")
        tokens = {}
        for uid, email, value in ((member_id, "member@example.com", "ada-value"), (bob_id, "bob@example.com",
                                                                                   "bob-value")):
            add_key(app, {sid: None}, owner_id=uid)
            with app.app_context():
                db.session.add(Credential(auth_mode="user", user_id=uid, mcp_server_id=sid, values={"x-api-key": value},
                                          header_keys=["x-api-key"]))
                db.session.commit()
            web = Web(client).login(email)
            tokens[value] = tokens_for(client, web)[1]["access_token"]  # a client of their own each
            web.post("/logout")
        for _ in range(2):  # alternate, so that a cache keyed without the person would show
            for value, token in tokens.items():
                rpc = session_rpc(client, token)
                r = rpc.call("tools/call", {"name": "keyed__headers", "arguments": {}})
                assert r.json["result"]["structuredContent"]["x-api-key"] == value
    finally:
        stop(proc)
