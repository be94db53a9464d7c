"""The floor for any Python gateway: a bare pass-through forwarder in plain WSGI.

No framework, no auth, no parsing: each POST body goes to the upstream over a kept-alive
connection (httpx's pooled transport, the same layer Portcullis uses) and the answer comes
back as is.
Served by gunicorn with the project's gunicorn.conf.py: gunicorn -c gunicorn.conf.py bench.forwarder:app
"""
import os

import httpx

UPSTREAM = os.environ["FORWARD_TO"]
transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=200, max_keepalive_connections=64))
TIMEOUT = {"timeout": {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 5.0}}
PASS = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version")


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    headers = {h: environ[k] for h in PASS if (k := "HTTP_" + h.upper().replace("-", "_")) in environ}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    r = transport.handle_request(httpx.Request(environ["REQUEST_METHOD"], UPSTREAM, content=body, headers=headers,
                                               extensions=TIMEOUT))
    content = r.read()
    r.close()
    out = [(k, v) for k, v in r.headers.items() if k.lower() in ("content-type", "mcp-session-id")]
    start_response(f"{r.status_code} {r.reason_phrase}", out)
    return [content]
