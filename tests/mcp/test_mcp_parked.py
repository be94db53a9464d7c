"""An initialize-era upstream's server-to-client requests during a call of a 2026-07-28 agent
(app/mcp/parked.py): the agent's POST is answered with ``input_required``, the upstream call
stays open, and the agent's retry (``inputResponses`` + ``requestState``) carries the answers
upstream and gets the next outcome. With the real SDK client in auto mode against a legacy-only
SDK upstream, over real HTTP; the checks on ``requestState`` with raw requests; and the retry
reaching another gunicorn instance or worker than the one holding the call."""
from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest
from mcp.types import CreateMessageResult, ElicitResult, ListRootsResult, Root, TextContent

from app.mcp.parked import PREFIX
from tests.mcp.test_mcp_relay_instances import database  # noqa: F401 - the fixture
from tests.support.mcp import add_key, add_server, client, free_port, gateway_instance, serve, \
    stop, wait_ready

V = "2026-07-28"
CAPS = {"elicitation": {"form": {}}}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def old(app, legacy_url):
    return add_server(app, "old", legacy_url)


async def on_sample(ctx, params):
    return CreateMessageResult(role="assistant", model="agent-llm",
                               content=TextContent(type="text", text="echo " + params.messages[0].content.text))


names = iter(["Ada", "Lovelace"] * 100)


async def on_elicit(ctx, params):
    return ElicitResult(action="accept", content={"answer": next(names) if "name?" in params.message else "Ada"})


async def on_roots(ctx):
    return ListRootsResult(roots=[Root(uri="file:///work/project", name="project")])


@pytest.mark.anyio
@pytest.mark.parametrize("path,prefix", [("/mcp", "old__"), ("/mcp/old", "")])
async def test_the_sdk_client_in_auto_mode_answers_a_legacy_upstream(app, live_server, old, path, prefix):
    _, key = add_key(app, {old: None})
    http, c = client(live_server + path, key, mode="auto", elicitation_callback=on_elicit,
                     sampling_callback=on_sample, list_roots_callback=on_roots)
    async with http, c:
        assert c.protocol_version == V  # no initialize towards Portcullis; the upstream gets its session
        assert (await c.call_tool(prefix + "era", {})).content[0].text == "2025-11-25"
        assert (await c.call_tool(prefix + "ask", {})).content[0].text == "accept:Ada"
        r = await c.call_tool(prefix + "sample", {"prompt": "hello"})
        assert r.content[0].text == "agent-llm:echo hello" and not r.is_error
        assert (await c.call_tool(prefix + "roots", {})).structured_content == {"result": ["file:///work/project"]}
        # two requests in one call: two input_required rounds
        assert (await c.call_tool(prefix + "ask_twice", {})).content[0].text == "Ada Lovelace"
    with app.app_context():  # a parked call's row and log go when its answer is taken
        from app.extensions import db
        from app.models import McpSession

        assert db.session.query(McpSession).filter_by(protocol_version=V).count() == 0


def _post(url, key, params, caps=CAPS, accept="application/json, text/event-stream", req_id=7):
    body = {"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": {**params, "_meta": {
        "io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": caps}}}
    headers = {"Authorization": f"Bearer {key}", "Accept": accept, "MCP-Protocol-Version": V,
               "Mcp-Method": "tools/call", "Mcp-Name": params["name"]}
    r = httpx.post(url, json=body, headers=headers, timeout=20)
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        return r.status_code, events[-1]
    return r.status_code, r.json()


def _asked(url, key, name="old__ask"):
    status, msg = _post(url, key, {"name": name, "arguments": {}})
    result = msg["result"]
    assert status == 200 and result["resultType"] == "input_required", msg
    (k, asked), = result["inputRequests"].items()
    assert asked["method"] == "elicitation/create" and asked["params"]["message"] == "Name?"
    assert result["requestState"].startswith(PREFIX)
    return k, result["requestState"]


def _answer(url, key, k, state, answer, name="old__ask", req_id=8):
    return _post(url, key, {"name": name, "arguments": {}, "requestState": state,
                            "inputResponses": {k: {"action": "accept", "content": {"answer": answer}}}},
                 req_id=req_id)


def test_request_state_is_checked(app, live_server, old):
    _, key = add_key(app, {old: None})
    _, other = add_key(app, {old: None})  # same grants, another caller
    url = live_server + "/mcp"
    k, state = _asked(url, key)
    # forged, or of another caller, or for another tool: refused, and the call stays parked
    for bad_key, bad_state, name, text in (
            (key, state[:-6] + "AAAAAA", "old__ask", "not valid or has expired"),
            (key, PREFIX + "x", "old__ask", "not valid or has expired"),
            (other, state, "old__ask", "issued to another caller"),
            (key, state, "old__echo", "belongs to another request")):
        status, msg = _post(url, bad_key, {"name": name, "arguments": {}, "requestState": bad_state,
                                           "inputResponses": {k: {"action": "accept", "content": {"answer": "Eve"}}}})
        assert status == 400 and msg["error"]["code"] == -32602 and text in msg["error"]["message"], msg
    status, msg = _answer(url, key, k, state, "Zed")
    assert status == 200 and msg["id"] == 8 and msg["result"]["content"][0]["text"] == "accept:Zed"
    assert msg["result"]["resultType"] == "complete"
    # once answered, the call is over: a replay is told so at once
    started = time.monotonic()
    status, msg = _answer(url, key, k, state, "Zed")
    assert status == 400 and "has ended" in msg["error"]["message"] and time.monotonic() - started < 5
    # an agent that declared no elicitation is never asked: the upstream hears -32601 at once
    status, msg = _post(url, key, {"name": "old__ask", "arguments": {}}, caps={})
    assert msg["error"]["message"] == "the agent did not declare the elicitation (form mode) capability", msg


def test_an_expired_request_state_is_refused(app, live_server, old):
    _, key = add_key(app, {old: None})
    url = live_server + "/mcp"
    wait = app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"]
    app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"] = 1
    try:
        k, state = _asked(url, key)
        time.sleep(2.2)
        status, msg = _answer(url, key, k, state, "Late")
    finally:
        app.config["PORTCULLIS_MCP_RELAY_WAIT_SECONDS"] = wait
    assert status == 400 and msg["error"]["code"] == -32602 and "expired" in msg["error"]["message"]


SETUP = """from app.ops.servers import create_server
from app.ops.keys import create_key
from app.upstream.discovery import refresh
s = create_server({'name': 'old', 'url': '%(url)s'})
refresh(s)
db.session.flush()
k, secret = create_key({'name': 'agent', 'mcp_servers': [{'server_id': s.id, 'tools': None}]}, source='api')
db.session.commit()
print(secret)"""


def _start(tmp_path, legacy_url, database, ports, **env_extra):
    env, secret = gateway_instance(str(tmp_path), ports[0], SETUP % {"url": legacy_url}, database=database)
    procs = []
    for port in ports:  # one database, one encryption key (instance/secrets.env)
        proc = serve("wsgi:app", {**env, "PORT": str(port), **env_extra}, "--access-logfile", "/dev/null",
                     stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_ready(proc, f"http://127.0.0.1:{port}/login")
    return procs, secret


@pytest.mark.parametrize("layout", ["two instances", "two workers"])
def test_the_retry_reaches_the_parked_call_from_another_process(tmp_path, legacy_url, database, layout):  # noqa: F811
    """The call parks on one process, the retry reaches another (two instances: chosen; two
    workers: new connections, whichever worker the kernel picks); the answer reaches the
    upstream from there and the outcome comes back through the database (and the bus: PostgreSQL
    LISTEN/NOTIFY on the PostgreSQL run, Redis db 15 on the SQLite run; without a bus the log is
    polled)."""
    bus = {} if database else {"REDIS_URL": "redis://127.0.0.1:6379/15"}
    ports = (free_port(), free_port()) if layout == "two instances" else (free_port(),)
    extra = {} if layout == "two instances" else {"PORTCULLIS_WORKERS": "2"}
    procs, secret = _start(tmp_path, legacy_url, database, ports, **bus, **extra)
    try:
        a, b = f"http://127.0.0.1:{ports[0]}/mcp", f"http://127.0.0.1:{ports[-1]}/mcp"
        for i, (first, then) in enumerate([(a, b), (b, a), (a, b)]):
            k, state = _asked(first, secret)
            started = time.monotonic()
            status, msg = _answer(then, secret, k, state, f"n{i}")
            assert status == 200 and msg["result"]["content"][0]["text"] == f"accept:n{i}", msg
            assert time.monotonic() - started < 5  # woken, not a poll's worth late
        # two rounds, each retry to the other process
        status, msg = _post(a, secret, {"name": "old__ask_twice", "arguments": {}})
        result = msg["result"]
        for answer, url in (("Ada", b), ("Lovelace", a)):
            (k, asked), = result["inputRequests"].items()
            status, msg = _answer(url, secret, k, result["requestState"], answer, name="old__ask_twice")
            result = msg["result"]
        assert result["content"][0]["text"] == "Ada Lovelace"
    finally:
        for proc in procs:
            stop(proc)
