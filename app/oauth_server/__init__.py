"""Portcullis as an OAuth 2.1 authorization server for its own /mcp, so that MCP client apps
(Claude, IDEs, the SDKs) connect with nothing but Portcullis's URL: discovery (RFC 8414, RFC
9728), dynamic registration (RFC 7591) and client ID metadata documents, authorization with
PKCE and a consent page that chooses as whom the client acts, JWT access tokens (RS256) with
rotating refresh tokens, revocation (RFC 7009), and the signing keys.

Protocol by Authlib (server.py), JOSE by joserfc (keys.py, tokens.py). The gateway verifies
tokens through app/identity.py; the consent behind each token is checked against the snapshot.
"""
from __future__ import annotations

from flask import Flask

from ..extensions import csrf


def register(app: Flask) -> None:
    from .keys import KeyCache
    from .server import create_server
    from .views import bp, register as register_view, revoke, token

    app.extensions["signing_keys"] = KeyCache()
    app.extensions["oauth_server"] = create_server(app)
    for view in (token, register_view, revoke):  # protocol endpoints: no cookies, no CSRF tokens
        csrf.exempt(view)
    app.register_blueprint(bp)
