"""An upstream MCP server (the official `mcp` SDK) that accepts only access tokens the test
OpenID provider issued for it: RS256 JWTs checked against the provider's JWKS (signature, `iss`,
`aud` = this server's URL, `exp`, `typ` at+jwt) through the SDK's server auth support, which
answers 401 with ``WWW-Authenticate: Bearer resource_metadata=...`` and serves the RFC 9728
protected-resource metadata naming the provider.

usage: python protected_mcp_server.py --port N --issuer URL [--scope mcp:tools] [--stateful]
The tool ``whoami`` tells whose token arrived (sub, email, client, scopes).
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
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    return mcp


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--scope", default="mcp:tools")
    p.add_argument("--stateful", action="store_true")
    a = p.parse_args()
    url = f"http://127.0.0.1:{a.port}/mcp"
    server = build(a.issuer, url, a.scope)
    app = (server.streamable_http_app() if a.stateful
           else server.streamable_http_app(stateless_http=True, json_response=True))
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
