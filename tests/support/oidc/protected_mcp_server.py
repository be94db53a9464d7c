"""An upstream MCP server (the official `mcp` SDK) that accepts only access tokens the test
OpenID provider issued for it: RS256 JWTs checked against the provider's JWKS (signature, `iss`,
`aud` = this server's URL, `exp`, `typ` at+jwt) through the SDK's server auth support, which
answers 401 with ``WWW-Authenticate: Bearer resource_metadata=...`` and serves the RFC 9728
protected-resource metadata naming the provider.

usage: python protected_mcp_server.py --port N --issuer URL [--scope mcp:tools] [--stateful]
                                       [--step-up TOOL=SCOPE]
The tool ``whoami`` tells whose token arrived (sub, email, client, scopes). ``--step-up``: a
tools/call of TOOL with a token lacking SCOPE is answered 403 ``insufficient_scope`` naming the
required scope plus SCOPE (the MCP authorization spec's step-up), as servers with per-tool scopes do.
"""
from __future__ import annotations

import argparse
import base64
import json
import time

import httpx
import uvicorn
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel


class JwksVerifier:
    """The SDK's TokenVerifier protocol over joserfc: keys fetched from the provider's JWKS (again
    at most every 10 s when a token names an unknown key, so a key rotation is picked up)."""

    def __init__(self, issuer: str, audience: str):
        self.issuer, self.audience = issuer, audience
        self.jwks_uri = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=5).json()["jwks_uri"]
        self.keys: KeySet | None = None
        self.fetched = 0.0

    async def _keyset(self, kid: str | None) -> KeySet:
        known = self.keys is not None and any(k.kid == kid for k in self.keys.keys)
        if not known and time.monotonic() - self.fetched > 10:
            async with httpx.AsyncClient(timeout=5) as client:
                self.keys = KeySet.import_key_set((await client.get(self.jwks_uri)).raise_for_status().json())
            self.fetched = time.monotonic()
        assert self.keys is not None
        return self.keys

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")).get("kid")
            decoded = jwt.decode(token, await self._keyset(kid), algorithms=["RS256"])
            if decoded.header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
                return None  # an ID token is not an access token
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer},
                                  aud={"essential": True, "value": self.audience},
                                  exp={"essential": True}, sub={"essential": True}).validate(decoded.claims)
        except (JoseError, ValueError, AttributeError, httpx.HTTPError):
            return None
        c = decoded.claims
        return AccessToken(token=token, client_id=c.get("client_id", ""), scopes=(c.get("scope") or "").split(),
                           expires_at=c["exp"], resource=self.audience, subject=c["sub"], claims=c)


class Whoami(BaseModel):
    sub: str
    email: str | None
    client_id: str
    scopes: list[str]


def build(issuer: str, url: str, scope: str) -> MCPServer:
    mcp = MCPServer("protected", version="0.1.0", token_verifier=JwksVerifier(issuer, url),
                    auth=AuthSettings(issuer_url=issuer, resource_server_url=url, required_scopes=[scope],
                                      validate_token_resource=True))

    @mcp.tool()
    def whoami() -> Whoami:
        """Whose token arrived: subject, e-mail, client and scopes."""
        token = get_access_token()
        return Whoami(sub=token.subject, email=(token.claims or {}).get("email"), client_id=token.client_id,
                      scopes=token.scopes)

    @mcp.tool()
    def write(text: str) -> str:
        """A tool that needs more than the server's basic scope (see --step-up)."""
        return f"written: {text}"

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    return mcp


def step_up(app, tool: str, scope: str, required: str, metadata_url: str):
    """ASGI: 403 insufficient_scope for a tools/call of ``tool`` whose bearer token lacks ``scope``
    (the token's claims are read unverified here: the SDK's middleware behind verifies it)."""
    async def wrapped(sc, receive, send):
        if sc["type"] != "http" or sc["method"] != "POST":
            return await app(sc, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        headers = dict(sc["headers"])
        auth = headers.get(b"authorization", b"").decode()
        if isinstance(msg, dict) and msg.get("method") == "tools/call" and \
                (msg.get("params") or {}).get("name") == tool and auth.startswith("Bearer "):
            try:
                claims = json.loads(base64.urlsafe_b64decode(auth[7:].split(".")[1] + "=="))
            except (ValueError, IndexError):
                claims = {}
            if scope not in (claims.get("scope") or "").split():
                challenge = (f'Bearer error="insufficient_scope", scope="{required} {scope}", '
                             f'resource_metadata="{metadata_url}"')
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"www-authenticate", challenge.encode()),
                                        (b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"error": "insufficient_scope"}'})
                return

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await app(sc, replay, send)
    return wrapped


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--scope", default="mcp:tools")
    p.add_argument("--stateful", action="store_true")
    p.add_argument("--step-up", default=None, help="TOOL=SCOPE")
    a = p.parse_args()
    url = f"http://127.0.0.1:{a.port}/mcp"
    server = build(a.issuer, url, a.scope)
    app = (server.streamable_http_app() if a.stateful
           else server.streamable_http_app(stateless_http=True, json_response=True))
    if a.step_up:
        tool, extra = a.step_up.split("=", 1)
        app = step_up(app, tool, extra, a.scope, f"http://127.0.0.1:{a.port}/.well-known/oauth-protected-resource/mcp")
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
