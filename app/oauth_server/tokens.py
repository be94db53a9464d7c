"""Access tokens: JWTs (RS256) that Portcullis signs for its own /mcp, and their verification
on the hot path.

Claims: ``iss`` (PORTCULLIS_BASE_URL, byte for byte), ``sub`` (the consenting user's id),
``aud`` (the MCP endpoint's URL: the resource), ``exp``, ``iat``, ``jti``, ``client_id``,
``scope``, ``portcullis_mode`` (user/vk/session), ``portcullis_vk`` (vk mode), ``portcullis_grant``
(the consent's id) and ``sid`` (the id of the dashboard login that consented).

Verification is pinned to RS256 and to the published keys (unknown ``kid``: refused after one
reload); everything else (issuer, audience, times, every claim present and well-typed) is
checked here, and a verified token is kept in memory until it expires so that repeated calls
cost a dictionary lookup. Whether its consent, user or key is still alive is the caller's
business (identity), checked on every call from the snapshot.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass

from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError

from .keys import ALG, cache

SCOPE = "mcp"
SKEW_SECONDS = 60
MAX_TOKEN_LENGTH = 4096
MAX_CACHED = 10_000
JWT_RE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
MODES = ("user", "vk", "session")


class InvalidToken(Exception):
    """The token is not acceptable here; ``str()`` is safe to send (error_description)."""


def looks_like_jwt(token: str) -> bool:
    """A JWT is told from a virtual key by its shape (three base64url parts, a JSON header),
    never by trying one after the other."""
    return len(token) <= MAX_TOKEN_LENGTH and JWT_RE.match(token) is not None


@dataclass(frozen=True)
class Claims:
    user_id: int
    mode: str
    grant_id: int
    login_id: int
    key_id: int | None
    client_id: str
    scopes: frozenset[str]
    audience: str
    expires: int


def issue(*, user_id: int, mode: str, key_id: int | None, grant_id: int, login_id: int, client_id: str,
          scope: str, resource: str, now: int | None = None) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    now = int(now if now is not None else time.time())
    lifetime = current_app.config["PORTCULLIS_ACCESS_TOKEN_SECONDS"]
    kid, key = cache().signing_key()
    claims = {
        "iss": current_app.config["PORTCULLIS_BASE_URL"], "sub": str(user_id), "aud": resource,
        "exp": now + lifetime, "iat": now, "jti": secrets.token_urlsafe(16), "client_id": client_id,
        "scope": scope, "portcullis_mode": mode, "portcullis_grant": grant_id, "sid": str(login_id),
    }
    if mode == "vk":
        claims["portcullis_vk"] = key_id
    return jwt.encode({"alg": ALG, "kid": kid, "typ": "at+jwt"}, claims, key), lifetime


_verified: dict[str, Claims] = {}
_verified_lock = threading.Lock()


def verify(token: str, resource: str) -> Claims:
    """The claims of a token valid for ``resource`` now; ``InvalidToken`` otherwise."""
    now = int(time.time())
    hit = _verified.get(token)
    if hit is not None:
        if hit.audience != resource:
            raise InvalidToken("the token is for another resource")
        if hit.expires <= now - SKEW_SECONDS:
            raise InvalidToken("the token has expired")
        return hit
    claims = _verify(token, resource, now)
    with _verified_lock:
        if len(_verified) >= MAX_CACHED:
            _verified.clear()
        _verified[token] = claims
    return claims


def _header_kid(token: str) -> str:
    from joserfc.jws import extract_compact

    try:
        header = extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError):
        raise InvalidToken("the token is malformed") from None
    if header.get("alg") != ALG:
        raise InvalidToken(f"only {ALG} tokens are accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("the token names no signing key")
    return kid


def _verify(token: str, resource: str, now: int) -> Claims:
    if not looks_like_jwt(token):
        raise InvalidToken("the token is malformed")
    keys = cache().verifying(_header_kid(token))
    if keys is None:
        raise InvalidToken("the token was signed by an unknown key")
    try:
        decoded = jwt.decode(token, keys, algorithms=[ALG])
    except (JoseError, ValueError) as e:
        raise InvalidToken(f"the token's signature is invalid ({type(e).__name__})") from None
    registry = jwt.JWTClaimsRegistry(
        now=now, leeway=SKEW_SECONDS,
        iss={"essential": True, "value": current_app.config["PORTCULLIS_BASE_URL"]},
        aud={"essential": True, "value": resource},
        exp={"essential": True}, iat={"essential": True}, sub={"essential": True}, jti={"essential": True})
    c = decoded.claims
    try:
        registry.validate(c)
    except JoseError as e:
        raise InvalidToken(_claim_text(e)) from None
    if isinstance(c.get("aud"), list) and len(c["aud"]) != 1:
        raise InvalidToken("the token must name exactly one audience")
    mode = c.get("portcullis_mode")
    grant, sid, sub, scope, client = (c.get("portcullis_grant"), c.get("sid"), c.get("sub"), c.get("scope"),
                                      c.get("client_id"))
    if mode not in MODES:
        raise InvalidToken("the token has no valid portcullis_mode")
    if not _int(grant) or not _digits(sid) or not _digits(sub):
        raise InvalidToken("the token lacks portcullis_grant, sid or a numeric sub")
    if not isinstance(scope, str) or not isinstance(client, str) or not client:
        raise InvalidToken("the token lacks scope or client_id")
    key_id = c.get("portcullis_vk")
    if (mode == "vk") != (key_id is not None) or (key_id is not None and not _int(key_id)):
        raise InvalidToken("portcullis_vk must be set in vk mode only")
    return Claims(user_id=int(sub), mode=mode, grant_id=grant, login_id=int(sid), key_id=key_id, client_id=client,
                  scopes=frozenset(scope.split()), audience=resource, expires=int(c["exp"]))


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def _digits(value) -> bool:
    return isinstance(value, str) and 0 < len(value) < 19 and value.isascii() and value.isdigit()


def _claim_text(e: JoseError) -> str:
    text = getattr(e, "description", None) or e.error
    return f"the token is not valid here: {text}"


def grant_of(token: str) -> int | None:
    """The consent id of a token this server signed, whatever its audience or expiry (for
    RFC 7009 revocation); None for anything else."""
    if not looks_like_jwt(token):
        return None
    try:
        keys = cache().verifying(_header_kid(token))
        if keys is None:
            return None
        decoded = jwt.decode(token, keys, algorithms=[ALG])
    except (InvalidToken, JoseError, ValueError):
        return None
    c = decoded.claims
    if c.get("iss") != current_app.config["PORTCULLIS_BASE_URL"] or not _int(c.get("portcullis_grant")):
        return None
    return c["portcullis_grant"]
