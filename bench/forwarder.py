"""The floor for any Python gateway: a bare pass-through forwarder in plain WSGI.

No framework, no auth, no parsing: each POST body goes to the upstream over a kept-alive
connection (the same httpx client Portcullis uses) and the answer comes back as is.
Served by gunicorn with the project's gunicorn.conf.py: gunicorn -c gunicorn.conf.py bench.forwarder:app
"""
import os

import httpx

UPSTREAM = os.environ["FORWARD_TO"]
client = httpx.Client(limits=httpx.Limits(max_connections=200, max_keepalive_connections=64), trust_env=False,
                      timeout=30)
PASS = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version")


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    headers = {h: environ[k] for h in PASS if (k := "HTTP_" + h.upper().replace("-", "_")) in environ}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    r = client.request(environ["REQUEST_METHOD"], UPSTREAM, content=body, headers=headers)
    out = [(k, v) for k, v in r.headers.items() if k.lower() in ("content-type", "mcp-session-id")]
    start_response(f"{r.status_code} {r.reason_phrase}", out)
    return [r.content]
