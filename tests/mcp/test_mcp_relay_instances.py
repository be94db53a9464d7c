"""A relayed request's answer reaching another instance than the one holding the upstream
request still arrives: two Portcullis instances (gunicorn, as `make run` serves) on one
database; the agent's call runs on the first, its answer to the upstream's elicitation is
POSTed to the second. The database is PostgreSQL on the PostgreSQL run (TEST_DATABASE_URL: a
fresh database of this file's own, dropped afterwards), one SQLite file otherwise."""
from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from tests.support.cluster import drop_database, fresh_database
from tests.support.mcp import UPSTREAM_KEY, free_port, gateway_instance, serve, stop, wait_ready

SETUP = """from app.ops.servers import create_server
from app.ops.keys import create_key
from app.upstream.discovery import refresh
s = create_server({'name': 'beta', 'url': '%(url)s', 'auth_type': 'headers', 'headers': {'X-Api-Key': '%(key)s'}})
refresh(s)
db.session.flush()
k, secret = create_key({'name': 'agent', 'mcp_servers': [{'server_id': s.id, 'tools': None}]}, source='api')
db.session.commit()
print(secret)"""


def _events(lines):
    data = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


@pytest.fixture
def database():
    """The instances' one database: a fresh PostgreSQL database made from TEST_DATABASE_URL, or
    None (gateway_instance's SQLite file)."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        yield None
        return
    name = url.rsplit("/", 1)[1].split("?")[0] + "_relay"
    yield fresh_database(url, name)
    drop_database(url, name)


def _stored(database, session_id) -> bool:
    """The agent session is in ``database`` (the instances did run on it)."""
    import psycopg

    with psycopg.connect(database, connect_timeout=5) as conn:
        return conn.execute("SELECT 1 FROM mcp_sessions WHERE id = %s", (session_id,)).fetchone() is not None


def _start(tmp_path, upstreams, database, ports, **env_extra):
    env, secret = gateway_instance(str(tmp_path), ports[0], SETUP % {"url": upstreams["beta"], "key": UPSTREAM_KEY},
                                   database=database)
    procs = []
    for port in ports:  # one database, one encryption key (instance/secrets.env)
        proc = serve("wsgi:app", {**env, "PORT": str(port), **env_extra}, "--access-logfile", "/dev/null",
                     stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_ready(proc, f"http://127.0.0.1:{port}/login")
    return procs, secret


def _session(url, secret):
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/json, text/event-stream"}
    r = httpx.post(url, headers=headers, timeout=10, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": {}}},
        "clientInfo": {"name": "t", "version": "1"}}})
    headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    assert httpx.post(url, headers=headers, timeout=10,
                      json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    return headers


def _elicit(call_url, answer_url, headers, name, call_id):
    """A call on call_url whose upstream asks the agent; the answer goes to answer_url (a new
    connection)."""
    call = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {"name": "beta__ask", "arguments": {}}}
    with httpx.stream("POST", call_url, headers=headers, json=call, timeout=20) as stream:
        events = _events(stream.iter_lines())
        asked = next(events)
        assert asked["method"] == "elicitation/create" and asked["id"].startswith("portcullis-relay:")
        answer = {"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"answer": name}}}
        assert httpx.post(answer_url, headers=headers, json=answer, timeout=10).status_code == 202
        final = next(events)
    assert final["id"] == call_id and final["result"]["content"][0]["text"] == f"accept:{name}"


def test_an_answer_posted_to_another_instance_reaches_the_upstream(tmp_path, upstreams, database):
    port_a, port_b = free_port(), free_port()
    procs, secret = _start(tmp_path, upstreams, database, (port_a, port_b))
    try:
        a, b = f"http://127.0.0.1:{port_a}/mcp", f"http://127.0.0.1:{port_b}/mcp"
        headers = _session(a, secret)
        assert database is None or _stored(database, headers["Mcp-Session-Id"])
        _elicit(a, b, headers, "Bo", 1)  # the call on the first instance, the answer on the second
        _elicit(b, a, headers, "Cy", 2)  # and the other way round
    finally:
        for proc in procs:
            stop(proc)


def test_answers_reach_the_upstream_from_either_of_two_workers(tmp_path, upstreams, database):
    """Two gunicorn workers of one instance: each answer goes over a new connection, to
    whichever worker the kernel hands it (which one cannot be chosen from outside)."""
    port = free_port()
    procs, secret = _start(tmp_path, upstreams, database, (port,), PORTCULLIS_WORKERS="2")
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        headers = _session(url, secret)
        assert database is None or _stored(database, headers["Mcp-Session-Id"])
        for i in range(6):
            _elicit(url, url, headers, f"n{i}", i + 1)
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.parametrize("layout", ["two instances", "two workers"])
def test_a_cancellation_posted_elsewhere_reaches_the_upstream(tmp_path, upstreams, database, layout):
    """The agent's notifications/cancelled reaches the process that holds the call through the
    cluster bus (PostgreSQL LISTEN/NOTIFY on the PostgreSQL run; Redis, db 13, on the SQLite
    run): the upstream stops the tool, which would otherwise wait 15 s. Two instances: the call
    on one, the cancellation on the other; two workers of one instance: over new connections,
    to whichever worker the kernel picks."""
    bus = {} if database else {"REDIS_URL": "redis://127.0.0.1:6379/13",  # a channel of this run's own
                               "PORTCULLIS_RATE_LIMIT_PREFIX": f"relay-test-{os.getpid()}"}
    ports = (free_port(), free_port()) if layout == "two instances" else (free_port(),)
    extra = {} if layout == "two instances" else {"PORTCULLIS_WORKERS": "2"}
    procs, secret = _start(tmp_path, upstreams, database, ports, **bus, **extra)
    try:
        a, b = f"http://127.0.0.1:{ports[0]}/mcp", f"http://127.0.0.1:{ports[-1]}/mcp"
        headers = _session(a, secret)
        gate = tmp_path / "never"
        for call_id in ("call-7", 8, "call-9", 10):
            call = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {
                "name": "beta__gate", "arguments": {"path": str(gate), "timeout": 15}, "_meta": {"progressToken": "p"}}}
            call_url, cancel_url = (a, b) if isinstance(call_id, str) else (b, a)
            started = time.monotonic()
            with httpx.stream("POST", call_url, headers=headers, json=call, timeout=30) as stream:
                events = _events(stream.iter_lines())
                assert next(events)["params"]["message"] == "waiting"  # the tool runs upstream
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": call_id}}
                assert httpx.post(cancel_url, headers=headers, json=cancel, timeout=10).status_code == 202
                rest = list(events)
            assert time.monotonic() - started < 10, call_id  # not the tool's 15 s
            assert not any(e.get("result", {}).get("content", [{}])[0].get("text") in ("opened", "timed out")
                           for e in rest)
    finally:
        for proc in procs:
            stop(proc)
