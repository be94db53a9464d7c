"""Access token verification: pinned to RS256 and this server's published keys; every claim
checked. Tokens here are forged with the product's own signing key (only its tests can), so
each rejection is the verifier's doing, not a bad signature's."""
from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.oauth_server import keys, tokens
from tests.support.oauth import BASE, MCP


@pytest.fixture
def signing(app):
    with app.app_context():
        kid, key = keys.cache().signing_key()
    tokens._verified.clear()
    yield kid, key
    tokens._verified.clear()


def good_claims(**changes) -> dict:
    now = int(time.time())
    claims = {"iss": BASE, "sub": "7", "aud": MCP, "exp": now + 600, "iat": now, "jti": "j1", "client_id": "c1",
              "scope": "mcp", "portcullis_mode": "user", "portcullis_grant": 3, "sid": "11"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(signing, claims: dict, header: dict | None = None) -> str:
    kid, key = signing
    return jwt.encode({"alg": "RS256", "kid": kid, **(header or {})}, claims, key)


def verify(app, token: str, resource: str = MCP):
    with app.app_context():
        return tokens.verify(token, resource)


def test_a_good_token_verifies(app, signing):
    c = verify(app, sign(signing, good_claims()))
    assert (c.user_id, c.mode, c.grant_id, c.login_id, c.key_id, c.client_id) == (7, "user", 3, 11, None, "c1")
    assert c.scopes == {"mcp"}
    vk = verify(app, sign(signing, good_claims(portcullis_mode="vk", portcullis_vk=5)))
    assert vk.key_id == 5


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("case", [
    "alg none", "hs256 with the public key", "unknown kid", "no kid", "wrong signature", "rs512",
])
def test_forged_signatures_are_refused(app, signing, case):
    kid, key = signing
    claims = good_claims()
    if case == "alg none":
        token = _b64({"alg": "none", "kid": kid}) + "." + _b64(claims) + "."
    elif case == "hs256 with the public key":
        import hashlib
        import hmac

        signing_input = _b64({"alg": "HS256", "kid": kid}) + "." + _b64(claims)
        mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    elif case == "unknown kid":
        other = RSAKey.generate_key(2048, private=True)
        token = jwt.encode({"alg": "RS256", "kid": other.thumbprint()}, claims, other)
    elif case == "no kid":
        token = jwt.encode({"alg": "RS256"}, claims, key)
    elif case == "wrong signature":
        other = RSAKey.generate_key(2048, private=True)
        token = jwt.encode({"alg": "RS256", "kid": kid}, claims, other)
    else:
        token = jwt.encode({"alg": "RS512", "kid": kid}, claims, key, algorithms=["RS512"])
    with pytest.raises(tokens.InvalidToken):
        verify(app, token)


@pytest.mark.parametrize("changes, why", [
    ({"iss": "http://127.0.0.1:8080/"}, "issuer with a trailing slash"),
    ({"iss": "https://evil.example"}, "another issuer"),
    ({"aud": MCP + "/github"}, "audience of another endpoint"),
    ({"aud": [MCP, MCP + "/x"]}, "two audiences"),
    ({"exp": lambda now: now - 120}, "expired beyond the skew"),
    ({"iat": lambda now: now + 120}, "issued in the future beyond 60 s"),
    ({"portcullis_mode": "admin"}, "unknown mode"),
    ({"portcullis_mode": "vk"}, "vk mode without a key"),
    ({"portcullis_vk": 5}, "a key outside vk mode"),
    ({"portcullis_grant": "3"}, "grant not an integer"),
    ({"sub": "seven"}, "sub not a user id"),
    ({"sid": 11}, "sid not a string"),
    ({"scope": ["mcp"]}, "scope not a string"),
])
def test_bad_claims_are_refused(app, signing, changes, why):
    now = int(time.time())  # times relative to when the test runs, not to when it was collected
    changes = {k: v(now) if callable(v) else v for k, v in changes.items()}
    with pytest.raises(tokens.InvalidToken):
        verify(app, sign(signing, good_claims(**changes)))


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope",
                                   "portcullis_mode", "portcullis_grant", "sid"])
def test_each_missing_claim_is_refused(app, signing, claim):
    claims = good_claims()
    del claims[claim]
    with pytest.raises(tokens.InvalidToken):
        verify(app, sign(signing, claims))


def test_a_verified_token_stays_bound_to_its_resource_and_expiry(app, signing):
    token = sign(signing, good_claims(exp=int(time.time()) + 600))
    verify(app, token)  # now cached
    with pytest.raises(tokens.InvalidToken, match="another resource"):
        verify(app, token, MCP + "/github")
    tokens._verified[token] = tokens._verified[token].__class__(
        **{**tokens._verified[token].__dict__, "expires": int(time.time()) - 61})
    with pytest.raises(tokens.InvalidToken, match="expired"):
        verify(app, token)


@pytest.mark.parametrize("value, is_jwt", [
    ("vk_" + "a" * 43, False), ("eyJhbGciOi.eyJzdWIi.c2ln", True), ("eyJ.x", False), ("a.b.c", False),
    ("eyJ" + "a" * 5000 + ".b.c", False), ("eyJa.b.c d", False),
])
def test_a_jwt_is_told_from_a_key_by_its_shape(value, is_jwt):
    assert tokens.looks_like_jwt(value) is is_jwt
