"""Fuzzing: no answer may be a 5xx and no traceback may reach the log.

- schemathesis against the OpenAPI document, in-process on the WSGI app, as an admin: generated
  requests of every operation, the same on objects that exist, and malformed ones;
- odd text (NUL, unpaired surrogates, controls, 70 000 characters) in every string an API request
  carries, which Hypothesis does not draw;
- seeded malformed JSON-RPC on /mcp: nesting, wrong types, huge numbers, odd ids, odd text,
  truncated and non-UTF-8 bodies, odd headers and methods.

Deterministic (derandomized Hypothesis, fixed seeds) and small, so the suite stays fast. What it
found is fixed, each with a test of its own in tests/core/test_bad_input.py."""
from __future__ import annotations

import json
import logging
import random
import socket
from collections import Counter
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from app.api.openapi import DOCUMENT
from app.extensions import db
from app.models import User
from app.ops import services as service_ops
from tests.conftest import PASSWORD, token_for
from tests.support.mcp import Rpc, add_key, add_server

SEED = 13
EXAMPLES = 6  # per operation and run: generated, on existing objects, malformed
MESSAGES = 1500  # malformed JSON-RPC messages on /mcp
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLOSED = "http://127.0.0.1:9/mcp"  # the discard port: nothing listens
FUZZ_ADMIN_ID = 1_000_000  # out of the fuzzer's way: it may edit or delete any user it can name


@pytest.fixture
def served(app, monkeypatch, caplog):
    """The app as deployed (an unhandled error is a logged 500, not an exception in the test),
    never connecting beyond this machine (the fuzzer makes up server URLs), every log line kept."""
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, "the fuzz test connects to loopback only")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    caplog.set_level(logging.INFO)
    yield app
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, "\n".join(caplog.text.splitlines()[-60:])


@pytest.fixture
def target(served, world, upstreams):
    """An admin token, and path parameters naming objects that exist, so that generated bodies
    meet real rows too: users, MCP servers (one reachable upstream), keys, a service, credentials,
    pending flows and their session rows."""
    alpha = add_server(served, "alpha", upstreams["alpha"])
    with served.app_context():
        service = service_ops.create_service({"name": "billing", "base_url": CLOSED, "secret": "s3cret-value"})
        user = User(id=FUZZ_ADMIN_ID, email="fuzz-admin@example.com", role="admin")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        service_id = service.id
    pending = [world.flows["member_linear"], world.flows["bot_jira"]]
    ids = {"user_id": [world.member_id, world.other_id], "server_id": [alpha, world.servers["github"]],
           "key_id": list(world.keys.values()), "service_id": [service_id],
           "credential_id": list(world.creds.values()), "flow_id": pending,
           "row_id": [world.cid("bot_linear"), world.cid("member_github"), *(f"flow_{f}" for f in pending)]}
    return {"Authorization": f"Bearer {token_for(served, FUZZ_ADMIN_ID)}"}, ids


def test_api(served, target, upstreams):
    auth, ids = target
    schemathesis.openapi.format("uri", st.sampled_from([upstreams["alpha"], CLOSED]))  # URLs the app may call
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", served)
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE")
    assert len(operations) >= 25
    statuses, failures, unsatisfiable = Counter(), [], []

    def run(operation, strategy, negative=False):
        @given(case=strategy)
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            resp = case.call(headers=auth)
            statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r:.300} -> "
                                f"{resp.status_code} {resp.text[:200]}")

        try:
            check()
        except Unsatisfiable:
            assert negative, operation.label
            unsatisfiable.append(operation.label)  # nothing of it can be malformed

    for operation in operations:
        run(operation, operation.as_strategy(GenerationMode.POSITIVE))
        names = [p.name for p in operation.path_parameters]
        if names and all(name in ids for name in names):
            existing = st.fixed_dictionaries({n: st.sampled_from(ids[n]) for n in names})
            run(operation, existing.flatmap(lambda params, op=operation: op.as_strategy(path_parameters=params)))
        run(operation, operation.as_strategy(GenerationMode.NEGATIVE), negative=True)

    assert not failures, "\n".join(failures[:20])
    assert len(unsatisfiable) <= 2, unsatisfiable
    assert statuses[200] and statuses[201] and statuses[204] and statuses[400] and statuses[422], statuses


ODD_TEXT = ["a\x00b", "\ud800", "\udfff\ud800", "é☃\U0001F600", "\x01\x1f\x7f\x9f", "\u202e\ufeff", " ", "%00",
            "x" * 70_000]


def _resolve(node: dict) -> dict:
    kind, name = node["$ref"].split("/")[-2:] if "$ref" in node else (None, None)
    return DOCUMENT["components"][kind][name] if kind else node


def test_api_odd_text(served, target):
    auth, ids = target
    client = served.test_client()
    rng, failures = random.Random(SEED), []
    for template, item in DOCUMENT["paths"].items():
        path = "/api/v1" + template
        for name, values in ids.items():
            path = path.replace("{%s}" % name, str(values[0]))
        for method, operation in item.items():
            if method == "parameters":
                continue
            sent = [(urlencode({param["name"]: text.encode("utf-8", "surrogatepass")}), None)
                    for param in map(_resolve, operation.get("parameters", [])) if param["in"] == "query"
                    for text in rng.sample(ODD_TEXT, 3)]
            if "requestBody" in operation:
                for field in _resolve(operation["requestBody"]["content"]["application/json"]["schema"])["properties"]:
                    text = rng.choice(ODD_TEXT)
                    sent += [(None, {field: value}) for value in (text, {text: text}, [text])]
            for query, payload in sent:  # json.dumps escapes the unpaired surrogates
                resp = client.open(path, method=method.upper(), query_string=query, data=json.dumps(payload),
                                   headers={**auth, "Content-Type": "application/json"})
                if resp.status_code >= 500:
                    failures.append(f"{method.upper()} {path} {query!r:.80} {payload!r:.80} -> {resp.status_code}")
    assert not failures, "\n".join(failures)


# --- /mcp ----------------------------------------------------------------------------------

VALID = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize",
     "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}}},
    {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "alpha__echo", "arguments": {"text": "x"}}},
    {"jsonrpc": "2.0", "id": 5, "method": "logging/setLevel", "params": {"level": "info"}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 6, "result": {}},
]
ODD_HEADERS = [{"MCP-Protocol-Version": "9999"}, {"Mcp-Session-Id": "s\xe9ssion\x7f"}, {"Accept": "text/event-stream"},
               {"Content-Type": "text/plain"}, {"Origin": "null"}]


def odd_text(rng: random.Random) -> str:
    """Any code point: control characters, accents, astral planes, unpaired surrogates."""
    ranges = [(0, 0x7f), (0x80, 0xffff), (0x10000, 0x10ffff)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 40)))


def odd_value(rng: random.Random, depth: int = 0):
    """Wrong types, huge and odd numbers, odd text, a little nesting."""
    choices = [
        lambda: None, lambda: True, lambda: rng.randint(-2**70, 2**70), lambda: 10**rng.randint(20, 400),
        lambda: rng.random() * 10**rng.randint(-300, 300), lambda: -0.0, lambda: "", lambda: odd_text(rng),
        lambda: "x" * rng.randint(1000, 70_000), lambda: "\ud800", lambda: "alpha__echo", lambda: "tools/call",
        lambda: [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))] if depth < 4 else [],
        lambda: {odd_text(rng): odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))} if depth < 4 else {},
    ]
    return rng.choice(choices)()


def mutate(rng: random.Random, message: dict) -> bytes:
    msg = json.loads(json.dumps(message))
    kind = rng.randrange(8)
    if kind == 0:  # a field gets a wrong or odd value
        target = msg["params"] if isinstance(msg.get("params"), dict) and rng.random() < 0.6 else msg
        target[rng.choice([*target, "id", "method", "params", "arguments", "name", "jsonrpc"])] = odd_value(rng)
    elif kind == 1:  # a field goes missing
        del msg[rng.choice(list(msg))]
    elif kind == 2:  # nested, a little or far too much
        levels = rng.choice([rng.randint(1, 80), rng.randint(1000, 20_000)])
        opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
        return (opening * levels + json.dumps(msg) + closing * levels).encode()
    elif kind == 3:  # truncated
        text = json.dumps(msg).encode()
        return text[:rng.randrange(len(text))]
    elif kind == 4:  # another top-level value
        msg = odd_value(rng)
    elif kind == 5:  # tool arguments of every kind
        msg = {"jsonrpc": "2.0", "id": rng.randint(1, 99), "method": "tools/call",
               "params": {"name": rng.choice(["alpha__echo", "alpha__add", "nope", "portcullis__request_key"]),
                          "arguments": odd_value(rng)}}
    elif kind == 6:  # bytes that are not UTF-8
        return json.dumps(msg).encode()[:rng.randint(0, 40)] + bytes(rng.randrange(256) for _ in range(8))
    else:  # an odd id
        msg["id"] = odd_value(rng)
    return json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def test_mcp(served, client, upstreams):
    server_id = add_server(served, "alpha", upstreams["alpha"])
    _, key = add_key(served, {server_id: None})
    doors = [Rpc(client, key), Rpc(client, key, "/mcp/alpha")]
    for rpc in doors:
        rpc.initialize()
    rng = random.Random(SEED)
    statuses = Counter()
    for i in range(MESSAGES):
        rpc, body = rng.choice(doors), mutate(rng, rng.choice(VALID))
        method = rng.choice(["POST"] * 12 + ["DELETE", "GET", "PUT"])
        resp = rpc.raw(body, rng.choice(ODD_HEADERS) if i % 5 == 0 else None, method=method)
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, (body[:300], resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.mimetype == "application/json":
            answer = resp.get_json()
            assert answer["jsonrpc"] == "2.0" and ("result" in answer or "error" in answer), answer
        if method == "DELETE" and resp.status_code == 204:
            rpc.initialize()  # that ended the session: carry on in a new one
    assert statuses[200] and statuses[202] and statuses[400] and statuses[404], statuses
    assert Rpc(client, key).call("ping").json["result"] == {}  # still serving


OAUTH_CALLS = 600  # seeded odd requests to the authorization server's endpoints


def test_oauth(served, client):
    """The authorization server's endpoints (not in the OpenAPI document): odd values in every
    parameter, as a stranger and as a logged-in person, never a 5xx or a traceback."""
    from tests.support.oauth import REDIRECT, authorize_url, pkce, register
    from tests.support.web import Web
    from tests.conftest import make_user

    make_user(served, "fuzz-person@example.com")
    person = Web(client).login("fuzz-person@example.com")
    known = register(client)["client_id"]
    rng = random.Random(SEED)
    statuses = Counter()
    params = ["grant_type", "code", "client_id", "redirect_uri", "code_verifier", "refresh_token", "resource",
              "scope", "token", "token_type_hint", "client_secret", "state", "code_challenge",
              "code_challenge_method", "response_type", "decision", "mode", "key_id"]
    for _ in range(OAUTH_CALLS):
        # (forms and URLs carry UTF-8: a lone surrogate cannot be sent there at all)
        data = {name: rng.choice([known, REDIRECT, "authorization_code", "refresh_token", "S256", "approve", "vk",
                                  str(odd_value(rng))[:3000].encode("utf-8", "replace").decode()])
                for name in rng.sample(params, rng.randint(0, len(params)))}
        kind = rng.randrange(5)
        if kind == 0:
            resp = client.post("/oauth/token", data=data)
        elif kind == 1:
            resp = client.post("/oauth/revoke", data=data)
        elif kind == 2:
            body = odd_value(rng) if rng.random() < 0.5 else {"redirect_uris": [odd_value(rng)], **{
                k: odd_value(rng) for k in rng.sample(["client_name", "grant_types", "response_types",
                                                       "token_endpoint_auth_method", "scope", "client_uri"], 2)}}
            resp = client.post("/oauth/register", data=json.dumps(body, ensure_ascii=False).encode(
                "utf-8", "surrogatepass"), content_type="application/json")
        else:
            url = authorize_url(data.get("client_id", known), pkce()[1], **{
                k: v for k, v in data.items() if k not in ("client_id",)})
            resp = person.get(url) if kind == 3 else person.post(url, data)
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, (kind, data, resp.status_code, resp.get_data(as_text=True)[:300])
    assert statuses[400] and (statuses[302] or statuses[200]), statuses
