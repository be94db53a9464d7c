"""Portcullis as OAuth 2.1 authorization server: discovery, registration, authorize + consent,
tokens, refresh rotation and reuse, revocation, logout, Connected apps and OAuth clients (API
and pages), signing key rotation."""
from __future__ import annotations

from datetime import timedelta

import pytest
from joserfc import jwt
from sqlalchemy import select, update

from app.extensions import db
from app.models import AuditEvent, OAuthClient, OAuthCode, OAuthConsent, OAuthRefreshToken, SigningKey
from app.models.base import utcnow
from app.oauth_server import keys, tokens
from tests.conftest import make_user
from tests.support.api import admin_api, anon_api, member_api  # noqa: F401
from tests.support.oauth import (BASE, MCP, REDIRECT, authorize_url, code_for, consent, exchange, pkce, query_of,
                                 refresh, register, tokens_for)
from tests.support.web import Web


@pytest.fixture
def member(client, member_id) -> Web:
    return Web(client).login("member@example.com")


_APP = []


@pytest.fixture(autouse=True)
def _the_app(app):
    _APP[:] = [app]


def keys_set():
    """Every key in the database, read directly (not through the gateway's cache)."""
    from joserfc.jwk import KeySet, RSAKey

    with _APP[0].app_context():
        rows = db.session.scalars(select(SigningKey.public_jwk)).all()
    return KeySet([RSAKey.import_key(dict(r)) for r in rows])


def claims_of(token: str) -> dict:
    return jwt.decode(token, keys_set()).claims


# -- discovery ------------------------------------------------------------------------------

def test_authorization_server_metadata(client):
    r = client.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    doc = r.get_json()
    assert doc["issuer"] == BASE  # byte for byte PORTCULLIS_BASE_URL
    for name, path in (("authorization_endpoint", "/oauth/authorize"), ("token_endpoint", "/oauth/token"),
                       ("registration_endpoint", "/oauth/register"), ("revocation_endpoint", "/oauth/revoke"),
                       ("jwks_uri", "/oauth/jwks")):
        assert doc[name] == BASE + path
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "none" in doc["token_endpoint_auth_methods_supported"]
    assert doc["scopes_supported"] == ["mcp"]
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["authorization_response_iss_parameter_supported"] is True
    from authlib.oauth2 import rfc8414, rfc9207

    rfc8414.AuthorizationServerMetadata(doc).validate(metadata_classes=[rfc9207.AuthorizationServerMetadata])
    assert client.get("/.well-known/openid-configuration").status_code == 404  # no ID tokens, no OIDC document


@pytest.mark.parametrize("path, resource", [
    ("/.well-known/oauth-protected-resource", MCP),
    ("/.well-known/oauth-protected-resource/mcp", MCP),
    ("/.well-known/oauth-protected-resource/mcp/github", MCP + "/github"),
    ("/.well-known/oauth-protected-resource/mcp/no-such-server", MCP + "/no-such-server"),  # no existence leak
])
def test_protected_resource_metadata(client, path, resource):
    r = client.get(path)
    assert r.status_code == 200
    assert r.get_json() == {"resource": resource, "authorization_servers": [BASE], "scopes_supported": ["mcp"],
                            "bearer_methods_supported": ["header"], "resource_name": r.get_json()["resource_name"]}


def test_protected_resource_metadata_of_a_malformed_name_is_404(client):
    assert client.get("/.well-known/oauth-protected-resource/mcp/Bad_Name").status_code == 404
    assert client.get("/.well-known/oauth-protected-resource/mcp/a/b").status_code == 404


def test_jwks_publishes_the_signing_key_without_private_parts(app, client):
    doc = client.get("/oauth/jwks").get_json()
    with app.app_context():
        kid = keys.cache().signing_key()[0]
    assert kid in [k["kid"] for k in doc["keys"]]
    for k in doc["keys"]:
        assert k["kty"] == "RSA" and k["alg"] == "RS256" and not {"d", "p", "q", "dp", "dq", "qi"} & set(k)


def test_keys_mode_has_no_authorization_server(app, client):
    app.config["PORTCULLIS_MCP_AUTH"] = "keys"
    try:
        for path in ("/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/mcp",
                     "/oauth/jwks", "/oauth/authorize?client_id=x"):
            assert client.get(path).status_code == 404, path
        for path in ("/oauth/token", "/oauth/register", "/oauth/revoke"):
            assert client.post(path, json={}).status_code == 404, path
    finally:
        app.config["PORTCULLIS_MCP_AUTH"] = "any"


# -- registration ---------------------------------------------------------------------------

def test_dynamic_registration_of_a_public_client(app, client):
    body = register(client)
    assert body["client_id"] and "client_secret" not in body
    assert body["redirect_uris"] == [REDIRECT] and body["token_endpoint_auth_method"] == "none"
    with app.app_context():
        row = db.session.scalar(select(OAuthClient).where(OAuthClient.client_id == body["client_id"]))
        assert row.kind == "dcr" and row.client_secret_hash is None
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "oauth_client.register"))


def test_confidential_client_gets_a_secret_stored_hashed(app, client):
    body = register(client, token_endpoint_auth_method="client_secret_basic")
    assert len(body["client_secret"]) > 30
    with app.app_context():
        row = db.session.scalar(select(OAuthClient).where(OAuthClient.client_id == body["client_id"]))
        assert row.client_secret_hash and body["client_secret"] not in row.client_secret_hash


@pytest.mark.parametrize("metadata", [
    {"redirect_uris": ["http://evil.example/cb"]},  # plain http, not loopback
    {"redirect_uris": ["https://app.example/cb#frag"]},
    {"redirect_uris": ["https://user:pw@app.example/cb"]},
    {"redirect_uris": []},
    {"redirect_uris": "https://app.example/cb"},
    {"redirect_uris": ["javascript:alert(1)"]},
    {"grant_types": ["client_credentials"]},
    {"grant_types": ["implicit", "authorization_code"]},
    {"response_types": ["token"]},
    {"token_endpoint_auth_method": "private_key_jwt"},
    {"scope": "admin"},
    {"client_name": "x" * 201},
])
def test_registration_refuses_bad_metadata(app, client, metadata):
    body = {"client_name": "T", "redirect_uris": ["https://app.example/cb"], **metadata}
    r = client.post("/oauth/register", json=body)
    assert r.status_code == 400
    assert r.get_json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
    assert set(r.get_json()) <= {"error", "error_description"}
    with app.app_context():
        assert db.session.scalar(select(OAuthClient.id)) is None


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"[" * 5000 + b"]" * 5000, b""])
def test_registration_refuses_non_objects(client, raw):
    r = client.post("/oauth/register", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_client_metadata"


def test_registration_is_rate_limited_per_address(app, client):
    app.config["PORTCULLIS_REGISTRATION_RATE_LIMIT"] = "3 per minute"
    try:
        codes = [client.post("/oauth/register", json={"redirect_uris": [REDIRECT]}).status_code for _ in range(4)]
    finally:
        app.config["PORTCULLIS_REGISTRATION_RATE_LIMIT"] = "20 per minute"
    assert codes == [201, 201, 201, 429]


# -- authorize and consent -------------------------------------------------------------------

def test_authorize_sends_a_stranger_to_login_and_back(client):
    app_client = register(client)
    url = authorize_url(app_client["client_id"], pkce()[1])
    r = client.get(url)
    assert r.status_code == 302 and "/login?next=" in r.headers["Location"]


def test_consent_page_names_the_app_the_host_and_the_resource(client, member):
    app_client = register(client, client_name="Claude <b>Desktop</b>")
    page = member.get(authorize_url(app_client["client_id"], pkce()[1])).get_data(as_text=True)
    assert "Claude &lt;b&gt;Desktop&lt;/b&gt;" in page and "<b>Desktop" not in page
    assert "127.0.0.1:33418" in page and MCP in page and "mcp" in page
    assert "You own no usable virtual key" in page  # the member has no key yet


def test_approve_as_me_redirects_with_code_state_and_iss(app, client, member):
    app_client = register(client)
    verifier, challenge = pkce()
    r = consent(member, authorize_url(app_client["client_id"], challenge, state="xyz"))
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT + "?")
    q = query_of(r.headers["Location"])
    assert q["state"] == "xyz" and q["iss"] == BASE and q["code"]
    with app.app_context():
        code = db.session.scalar(select(OAuthCode))
        assert code.code_hash != q["code"] and q["code"] not in code.code_hash  # stored hashed
        assert (code.expires_at - code.created_at) <= timedelta(seconds=61)


def test_deny_returns_access_denied(client, member):
    app_client = register(client)
    r = consent(member, authorize_url(app_client["client_id"], pkce()[1], state="s9"), decision="deny")
    q = query_of(r.headers["Location"])
    assert q == {"error": "access_denied", "state": "s9", "iss": BASE} or (
        q["error"] == "access_denied" and q["state"] == "s9" and q["iss"] == BASE)


@pytest.mark.parametrize("change, error", [
    ({"method": None}, "invalid_request"),  # PKCE method missing (plain by default): refused
    ({"method": "plain"}, "invalid_request"),
    ({"resource": "https://elsewhere.example/mcp"}, "invalid_request"),
    ({"resource": MCP + "/Bad_Name"}, "invalid_request"),
    ({"scope": "admin"}, "invalid_scope"),
])
def test_bad_authorization_requests_go_back_as_errors(client, member, change, error):
    app_client = register(client)
    url = authorize_url(app_client["client_id"], pkce()[1], **change)
    r = member.get(url)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    q = query_of(r.headers["Location"])
    assert q["error"] == error and q["iss"] == BASE and r.headers["Location"].startswith(REDIRECT)


def test_missing_code_challenge_is_refused(client, member):
    app_client = register(client)
    url = authorize_url(app_client["client_id"], "", method=None)
    q = query_of(member.get(url).headers["Location"])
    assert q["error"] == "invalid_request" and "PKCE" in q["error_description"]


def test_unknown_client_or_redirect_is_shown_never_redirected(client, member):
    app_client = register(client)
    for url in (authorize_url("no-such-client", pkce()[1]),
                authorize_url(app_client["client_id"], pkce()[1], redirect_uri="https://evil.example/cb"),
                authorize_url(app_client["client_id"], pkce()[1], redirect_uri="http://127.0.0.1:1/other")):
        r = member.get(url)
        assert r.status_code == 400 and "Location" not in r.headers
        assert "Cannot connect this app" in r.get_data(as_text=True)


def test_loopback_redirect_may_use_any_port(client, member):
    app_client = register(client)
    code, _ = code_for(member, app_client["client_id"], redirect_uri="http://127.0.0.1:59999/callback")
    assert code


def test_consent_as_one_of_my_keys(app, client, member, member_id):
    from tests.support.mcp import add_key

    key_id, _ = add_key(app, name="laptop", owner_id=member_id)
    other_id, _ = add_key(app, name="not-mine")
    app_client = register(client)
    verifier, challenge = pkce()
    url = authorize_url(app_client["client_id"], challenge)
    page = member.get(url).get_data(as_text=True)
    assert "laptop" in page and "not-mine" not in page
    bad = consent(member, url, mode="vk", key_id=other_id)
    assert bad.status_code == 422 and "Choose one of your keys" in bad.get_data(as_text=True)
    assert consent(member, url, mode="session").status_code == 422  # only without enforced auth
    r = consent(member, url, mode="vk", key_id=key_id)
    tok = exchange(client, app_client["client_id"], query_of(r.headers["Location"])["code"], verifier).get_json()
    c = claims_of(tok["access_token"])
    assert c["portcullis_mode"] == "vk" and c["portcullis_vk"] == key_id and c["sub"] == str(member_id)


# -- tokens -----------------------------------------------------------------------------------

def test_token_claims(app, client, member, member_id):
    app_client, tok = tokens_for(client, member)
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 600 and tok["scope"] == "mcp"
    c = claims_of(tok["access_token"])
    with app.app_context():
        consent_row = db.session.scalar(select(OAuthConsent))
        login_id = consent_row.login_id
    assert c["iss"] == BASE and c["sub"] == str(member_id) and c["aud"] == MCP
    assert c["exp"] - c["iat"] == 600 and c["jti"] and c["client_id"] == app_client["client_id"]
    assert c["scope"] == "mcp" and c["portcullis_mode"] == "user" and "portcullis_vk" not in c
    assert c["portcullis_grant"] == consent_row.id and c["sid"] == str(login_id)
    header = jwt.decode(tok["access_token"], keys_set()).header
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
    with app.app_context():
        row = db.session.scalar(select(OAuthRefreshToken))
        assert row.token_hash != tok["refresh_token"]


def test_token_for_a_named_endpoint(client, member):
    app_client = register(client)
    code, verifier = code_for(member, app_client["client_id"], resource=MCP + "/github")
    tok = exchange(client, app_client["client_id"], code, verifier).get_json()
    assert claims_of(tok["access_token"])["aud"] == MCP + "/github"


def test_resource_must_match_at_the_token_endpoint(client, member):
    app_client = register(client)
    code, verifier = code_for(member, app_client["client_id"])
    r = exchange(client, app_client["client_id"], code, verifier, resource=MCP + "/other")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_wrong_verifier_is_refused(client, member):
    app_client = register(client)
    code, _ = code_for(member, app_client["client_id"])
    r = exchange(client, app_client["client_id"], code, pkce()[0])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_code_of_another_client_is_refused(client, member):
    one, two = register(client), register(client)
    code, verifier = code_for(member, one["client_id"])
    assert exchange(client, two["client_id"], code, verifier).get_json()["error"] == "invalid_grant"


def test_code_expires_after_60_seconds(app, client, member):
    app_client = register(client)
    code, verifier = code_for(member, app_client["client_id"])
    with app.app_context():
        row = db.session.scalar(select(OAuthCode))
        assert timedelta(seconds=59) <= row.expires_at - row.created_at <= timedelta(seconds=60)
        db.session.execute(update(OAuthCode).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    r = exchange(client, app_client["client_id"], code, verifier)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_reused_code_revokes_what_the_first_use_issued(app, client, member):
    app_client = register(client)
    code, verifier = code_for(member, app_client["client_id"])
    first = exchange(client, app_client["client_id"], code, verifier).get_json()
    again = exchange(client, app_client["client_id"], code, verifier)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    with app.app_context():
        row = db.session.scalar(select(OAuthConsent))
        assert row.revoked_at is not None and row.revoked_reason == "code_reused"
    r = refresh(client, app_client["client_id"], first["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_refresh_rotates_and_reuse_revokes_the_family(app, client, member):
    app_client, tok = tokens_for(client, member)
    r = refresh(client, app_client["client_id"], tok["refresh_token"])
    assert r.status_code == 200, r.get_data(as_text=True)
    second = r.get_json()
    assert second["refresh_token"] != tok["refresh_token"] and second["access_token"] != tok["access_token"]
    assert claims_of(second["access_token"])["portcullis_grant"] == claims_of(tok["access_token"])["portcullis_grant"]
    reuse = refresh(client, app_client["client_id"], tok["refresh_token"])
    assert reuse.status_code == 400 and reuse.get_json()["error"] == "invalid_grant"
    # the whole family is gone: the newest refresh token too
    assert refresh(client, app_client["client_id"], second["refresh_token"]).status_code == 400
    with app.app_context():
        assert db.session.scalar(select(OAuthConsent.revoked_reason)) == "refresh_token_reused"


def test_refresh_needs_the_same_client_and_resource(client, member):
    app_client, tok = tokens_for(client, member)
    other = register(client)
    assert refresh(client, other["client_id"], tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert refresh(client, app_client["client_id"], tok["refresh_token"],
                   resource=MCP + "/x").get_json()["error"] == "invalid_grant"


def test_confidential_client_must_authenticate(client, member):
    app_client = register(client, token_endpoint_auth_method="client_secret_post")
    code, verifier = code_for(member, app_client["client_id"])
    assert exchange(client, app_client["client_id"], code, verifier).status_code == 401
    code, verifier = code_for(member, app_client["client_id"])
    r = exchange(client, app_client["client_id"], code, verifier, client_secret=app_client["client_secret"])
    assert r.status_code == 200


def test_token_endpoint_errors_are_rfc6749(client):
    for data in ({}, {"grant_type": "password", "username": "a", "password": "b"},
                 {"grant_type": "authorization_code", "code": "x", "client_id": "nope"}):
        r = client.post("/oauth/token", data=data)
        assert 400 <= r.status_code < 500 and set(r.get_json()) <= {"error", "error_description", "error_uri"}


# -- revocation and logout ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
def test_revocation_endpoint_revokes_the_consent(app, client, member, which):
    app_client, tok = tokens_for(client, member)
    r = client.post("/oauth/revoke", data={"token": tok[which], "client_id": app_client["client_id"]})
    assert r.status_code == 200
    with app.app_context():
        assert db.session.scalar(select(OAuthConsent.revoked_reason)) == "revoked_by_client"
    assert refresh(client, app_client["client_id"], tok["refresh_token"]).status_code == 400


def test_revocation_by_another_client_changes_nothing(app, client, member):
    app_client, tok = tokens_for(client, member)
    other = register(client)
    r = client.post("/oauth/revoke", data={"token": tok["refresh_token"], "client_id": other["client_id"]})
    assert r.status_code == 400
    assert refresh(client, app_client["client_id"], tok["refresh_token"]).status_code == 200


def test_logout_revokes_refresh_tokens_of_that_login(app, client, member):
    app_client, tok = tokens_for(client, member)
    member.post("/logout")
    r = refresh(client, app_client["client_id"], tok["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"



# -- Connected apps and OAuth clients: API and pages -------------------------------------------

def test_connected_apps_api_lists_own_and_revokes(app, client, member, member_api, admin_api):
    app_client, tok = tokens_for(client, member)
    other_id = make_user(app, "other@example.com")
    body = member_api.get("/oauth-consents").get_json()
    assert body["total_count"] == 1
    row = body["oauth_consents"][0]
    assert row["client"]["client_id"] == app_client["client_id"] and row["mode"] == "user"
    assert row["scopes"] == ["mcp"] and row["resource"] == MCP and row["signed_in"] is True
    assert row["user"]["email"] == "member@example.com"
    assert admin_api.get("/oauth-consents").get_json()["total_count"] == 1  # admins see everyone's
    from tests.conftest import Api, token_for

    other = Api(client, token_for(app, other_id))
    assert other.get("/oauth-consents").get_json()["total_count"] == 0
    assert other.delete(f"/oauth-consents/{row['id']}").status_code == 404  # not theirs: not found
    assert member_api.delete(f"/oauth-consents/{row['id']}").status_code == 204
    assert member_api.get("/oauth-consents").get_json()["total_count"] == 0
    assert member_api.delete(f"/oauth-consents/{row['id']}").status_code == 404
    assert refresh(client, app_client["client_id"], tok["refresh_token"]).status_code == 400
    with app.app_context():
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "oauth.consent_revoke"))


def test_signed_out_consent_is_shown_so(client, member, member_api):
    tokens_for(client, member)
    member.post("/logout")
    assert member_api.get("/oauth-consents").get_json()["oauth_consents"][0]["signed_in"] is False


def test_oauth_clients_api_is_for_admins(app, client, member, admin_api, member_api):
    app_client, tok = tokens_for(client, member)
    assert member_api.get("/oauth-clients").status_code == 403
    body = admin_api.get("/oauth-clients").get_json()
    assert body["total_count"] == 1 and body["oauth_clients"][0]["client_id"] == app_client["client_id"]
    pk = body["oauth_clients"][0]["id"]
    assert admin_api.get(f"/oauth-clients/{pk}").get_json()["kind"] == "dcr"
    assert member_api.delete(f"/oauth-clients/{pk}").status_code == 403
    assert admin_api.delete(f"/oauth-clients/{pk}").status_code == 204
    assert admin_api.get(f"/oauth-clients/{pk}").status_code == 404
    assert refresh(client, app_client["client_id"], tok["refresh_token"]).get_json()["error"] == "invalid_client"
    with app.app_context():
        assert db.session.scalar(select(OAuthConsent.id)) is None  # its consents went with it


def test_connected_apps_page_lists_and_revokes_in_place(client, member):
    app_client, tok = tokens_for(client, member)
    page = member.get("/connected-apps").get_data(as_text=True)
    assert "Test App" in page and "Connected apps" in page and 'aria-current="page"' in page
    fragment = member.get("/connected-apps?q=test", htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and "Test App" in fragment
    import re

    consent_id = re.search(r'id="consent-(\d+)"', page).group(1)
    r = member.post(f"/connected-apps/{consent_id}/revoke", htmx=True)
    assert r.status_code == 200 and "revoked" in r.get_data(as_text=True)
    assert "Test App" not in member.get("/connected-apps").get_data(as_text=True)
    assert refresh(client, app_client["client_id"], tok["refresh_token"]).status_code == 400


def test_oauth_clients_page_for_admins(client, member, admin_id):
    tokens_for(client, member)
    assert member.get("/oauth-clients").status_code == 403
    member.post("/logout")
    admin = Web(client).login("admin@example.com")
    page = admin.get("/oauth-clients").get_data(as_text=True)
    assert "Test App" in page and REDIRECT in page
    import re

    pk = re.search(r'id="oauth-client-(\d+)"', page).group(1)
    assert admin.post(f"/oauth-clients/{pk}/delete").status_code == 303
    page = admin.get("/oauth-clients").get_data(as_text=True)
    assert "client Test App deleted" in page and f'id="oauth-client-{pk}"' not in page


# -- signing keys ------------------------------------------------------------------------------

def test_rotation_keeps_old_tokens_valid_until_they_expire(app, client, member):
    app_client, tok = tokens_for(client, member)
    runner = app.test_cli_runner()
    try:
        out = runner.invoke(args=["rotate-signing-key"])
        assert out.exit_code == 0, out.output
        assert "signing with" in out.output and "retired" in out.output
        old_kid = jwt.decode(tok["access_token"], keys_set()).header["kid"]
        with app.app_context():
            assert tokens.verify(tok["access_token"], MCP).user_id  # the old key is still accepted
            new_kid = keys.cache().signing_key()[0]
        assert new_kid != old_kid
        jwks = [k["kid"] for k in client.get("/oauth/jwks").get_json()["keys"]]
        assert old_kid in jwks and new_kid in jwks
        second = refresh(client, app_client["client_id"], tok["refresh_token"]).get_json()
        assert jwt.decode(second["access_token"], keys_set()).header["kid"] == new_kid
        # once every token of the old key has expired, the sweeper removes it
        with app.app_context():
            old = db.session.scalar(select(SigningKey).where(SigningKey.kid == old_kid))
            assert old.remove_after - old.retired_at >= timedelta(seconds=600)
            old.remove_after = utcnow() - timedelta(seconds=1)
            db.session.commit()
        assert runner.invoke(args=["sweep"]).exit_code == 0
        tokens._verified.clear()
        app.extensions["signing_keys"].invalidate()
        assert old_kid not in [k["kid"] for k in client.get("/oauth/jwks").get_json()["keys"]]
        with app.app_context():
            with pytest.raises(tokens.InvalidToken, match="unknown key"):
                tokens.verify(tok["access_token"], MCP)
    finally:
        with app.app_context():  # one signing key again for the other tests
            db.session.execute(SigningKey.__table__.delete().where(SigningKey.retired_at.is_not(None)))
            db.session.commit()
        app.extensions["signing_keys"].invalidate()


def test_setup_creates_the_first_key_once(app):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["setup"])
    assert out.exit_code == 0, out.output
    assert "signing key" not in out.output  # the test session's key exists already
    with app.app_context():
        assert db.session.scalar(select(db.func.count(SigningKey.id))) == 1


@pytest.mark.parametrize("client_id", ["a\x00b", "https://x.example/c\x00.json", "\u2028", "x" * 3000])
def test_odd_client_ids_are_unknown_clients(client, member, client_id):
    r = member.get(authorize_url(client_id, pkce()[1]))
    assert r.status_code == 400 and "Cannot connect this app" in r.get_data(as_text=True)
    r = client.post("/oauth/token", data={"grant_type": "authorization_code", "client_id": client_id, "code": "x",
                                          "code_verifier": "v" * 43, "redirect_uri": REDIRECT})
    assert r.status_code in (400, 401) and r.get_json()["error"] in ("invalid_client", "invalid_request")


@pytest.mark.parametrize("uri", ["https://app.example/cb\x00", "https://app.example/c b", "https://app.example/\u2028"])
def test_redirect_uris_with_control_characters_are_refused(client, uri):
    r = client.post("/oauth/register", json={"redirect_uris": [uri]})
    assert r.status_code == 400 and r.get_json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")


@pytest.mark.parametrize("change", [{"response_type": "cöde"}, {"redirect_uri": "https://ä.example/cb"},
                                    {"state": "\u2028"}])
def test_parameters_that_are_not_printable_ascii_are_a_400(client, member, change):
    """Found by the fuzz test: the protocol library puts some parameters into error texts, which
    it refuses to build from anything but printable ASCII (a 500)."""
    app_client = register(client)
    r = member.get(authorize_url(app_client["client_id"], pkce()[1], **change))
    assert r.status_code == 400 and "Cannot connect this app" in r.get_data(as_text=True)
    assert "Location" not in r.headers
    r = client.post("/oauth/token", data={"grant_type": "authorizatiön_code", "client_id": app_client["client_id"]})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"


def test_the_sweeper_removes_what_the_authorization_server_no_longer_needs(app, client, member):
    app_client, tok = tokens_for(client, member)
    code, _ = code_for(member, app_client["client_id"])  # an unused code
    with app.app_context():
        long_ago = utcnow() - timedelta(days=2)
        db.session.execute(update(OAuthCode).values(expires_at=long_ago))
        db.session.execute(update(OAuthRefreshToken).values(expires_at=long_ago))
        db.session.commit()
    out = app.test_cli_runner().invoke(args=["sweep"])
    assert out.exit_code == 0, out.output
    with app.app_context():
        assert db.session.scalar(select(db.func.count(OAuthCode.id))) == 0
        assert db.session.scalar(select(db.func.count(OAuthRefreshToken.id))) == 0
        assert db.session.scalar(select(db.func.count(OAuthConsent.id))) == 1  # still live, just signed out


def test_no_token_or_code_reaches_the_log_even_at_debug(app, client, member, caplog):
    """Authlib logs the tokens it issues at DEBUG; that logger stays at INFO whatever the root says."""
    import logging

    caplog.set_level(logging.DEBUG)
    logging.getLogger("authlib").setLevel(logging.DEBUG)  # someone turns everything up ...
    from app import _logging

    _logging(app)  # ... the app's own set-up turns the protocol library down again
    app_client = register(client)
    code, verifier = code_for(member, app_client["client_id"])
    tok = exchange(client, app_client["client_id"], code, verifier).get_json()
    second = refresh(client, app_client["client_id"], tok["refresh_token"]).get_json()
    for secret in (code, tok["access_token"], tok["refresh_token"], second["access_token"], second["refresh_token"]):
        assert secret not in caplog.text


def test_the_sweeper_forgets_registered_clients_that_never_got_a_token(app, client, member):
    used, _ = tokens_for(client, member)
    abandoned = register(client)
    fresh = register(client)
    with app.app_context():
        db.session.execute(update(OAuthClient).where(OAuthClient.client_id.in_(
            [used["client_id"], abandoned["client_id"]])).values(created_at=utcnow() - timedelta(days=2)))
        db.session.commit()
    assert app.test_cli_runner().invoke(args=["sweep"]).exit_code == 0
    with app.app_context():
        left = set(db.session.scalars(select(OAuthClient.client_id)))
    assert left == {used["client_id"], fresh["client_id"]}
