"""Fixtures for the gateway tests: real upstream MCP servers (the official SDK) started once
per test session on free loopback ports, a deliberately faulty upstream, and helpers to
register servers and keys through the ops layer; clients for /mcp (``Rpc`` through the test
client, the SDK's over real HTTP); per-user header values (keyed upstreams, agents that call
them); the sessions ``world``. tests/conftest.py loads the fixtures here for every test."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from sqlalchemy import select

from app.extensions import db
from app.models import Credential, Flow, McpServer, McpSession, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow
from tests.conftest import make_user

TESTS = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "upstream-shared-key-4f2a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.head(url, timeout=0.5)  # any status: listening (GET /mcp would stream forever)
            return
        except httpx.TransportError:
            pass
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"upstream exited with {proc.returncode}")
    proc.kill()
    raise TimeoutError(url)


def wait_for(check, what: str, timeout: float = 30.0):
    """Poll ``check()`` until it returns something truthy (returned); ``timeout`` only guards
    against a hang (a condition that never comes), it is not what the test measures."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_upstream(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(TESTS / "upstream" / "mcp_server.py"), "--port", str(port), *args])
    url = f"http://127.0.0.1:{port}/mcp"
    wait_ready(proc, url)
    return proc, url


@contextmanager
def keyed_upstreams(sample: str, alice: str, bob: str, team: str):
    """Two upstreams for per-user headers: ``one`` needs X-Api-Key (sample, alice's or bob's
    value), ``two`` needs X-Api-Key (sample or alice's) and X-Team."""
    one, one_url = start_upstream("--name", "keyed", *[a for v in (sample, alice, bob)
                                                        for a in ("--require-header", f"X-Api-Key={v}")])
    two, two_url = start_upstream("--name", "two", "--require-header", f"X-Api-Key={sample}",
                                  "--require-header", f"X-Api-Key={alice}", "--require-header", f"X-Team={team}")
    try:
        yield {"one": one_url, "two": two_url}
    finally:
        stop(one)
        stop(two)


@pytest.fixture(scope="session")
def upstreams():
    """alpha: stateless JSON, no auth. beta: stateful SSE, needs X-Api-Key."""
    alpha, alpha_url = start_upstream("--name", "alpha")
    beta, beta_url = start_upstream("--name", "beta", "--stateful", "--require-header", f"X-Api-Key={UPSTREAM_KEY}")
    yield {"alpha": alpha_url, "beta": beta_url}
    stop(alpha)
    stop(beta)


ROOT = TESTS.parent
BIN = Path(sys.executable).parent


def gateway_instance(tmp: str, port: int, setup: str, *, database: str | None = None,
                     **env_extra: str) -> tuple[dict, str]:
    """A fresh instance under ``tmp`` prepared as ``make run`` would (``flask db upgrade``), on a
    SQLite file there, or on ``database`` (an empty database's URL) when given; then ``setup`` run
    in an app context (Python lines; ``create_app`` and ``db`` are there).
    Returns the environment to serve it with (gunicorn: ``serve``) and what ``setup`` printed last."""
    env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": f"{tmp}/instance", "PORT": str(port), **env_extra}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    if database:
        env["DATABASE_URL"] = database
    subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    script = ("from app import create_app\nfrom app.extensions import db\napp = create_app()\n"
              "with app.app_context():\n" + "".join(f"    {line}\n" for line in setup.strip().splitlines()))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout.strip().splitlines()
    return env, out[-1] if out else ""


def serve(app_spec: str, env: dict, *gunicorn_args: str, **popen) -> subprocess.Popen:
    """``app_spec`` under gunicorn with the project's gunicorn.conf.py (what ``make run`` uses)."""
    return subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", *gunicorn_args, app_spec],
                            cwd=ROOT, env=env, **popen)


_ALPHA: dict[str, str] = {}


@pytest.fixture
def real_upstream(upstreams):
    """For modules whose servers are discovered when created (``pytestmark =
    pytest.mark.usefixtures("real_upstream")``): ``mcp_url()`` is then a real upstream MCP server."""
    _ALPHA["url"] = upstreams["alpha"]


def mcp_url() -> str:
    return _ALPHA["url"]


@pytest.fixture(scope="session")
def faulty():
    from tests.upstream import faulty as module

    server, url = module.start()
    yield url, module
    server.shutdown()


def add_server(app, name: str, url: str, **fields) -> int:
    """Register (and discover) an MCP server through the ops layer, as the API would."""
    from app.upstream.discovery import refresh
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": name, "url": url, **fields})
        refresh(server)
        db.session.commit()
        return server.id


def add_key(app, servers=None, **fields) -> tuple[int, str]:
    """A virtual key with grants; servers is {server_id: tools or None}."""
    from app.ops.keys import create_key

    data = {"name": fields.pop("name", "agent"), **fields}
    data["mcp_servers"] = [{"server_id": sid, "tools": tools} for sid, tools in (servers or {}).items()]
    with app.app_context():
        key, secret = create_key(data, source="api")
        db.session.commit()
        return key.id, secret


# --- /mcp through the Flask test client (Rpc), and the `mcp` SDK's client over real HTTP ------

ACCEPT = "application/json, text/event-stream"


class Rpc:
    def __init__(self, client, key=None, path="/mcp"):
        self.client, self.key, self.path, self.session = client, key, path, None
        self._id = 0

    def headers(self, extra=None):
        h = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        if self.session:
            h["Mcp-Session-Id"] = self.session
            h["MCP-Protocol-Version"] = "2025-11-25"
        h.update(extra or {})
        return h

    def raw(self, body, extra=None, method="POST"):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.client.open(self.path, method=method, data=data, headers=self.headers(extra))

    def initialize(self, version="2025-11-25"):
        r = self.raw({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert r.status_code == 200, r.get_data(as_text=True)
        self.session = r.headers["Mcp-Session-Id"]
        assert self.raw({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return r.json["result"]

    def call(self, method, params=None, extra=None):
        self._id += 1
        msg = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params is not None:
            msg["params"] = params
        return self.raw(msg, extra)


def client(url: str, key: str | None, mode: str = "legacy", **kw):
    """The SDK's client; ``mode="legacy"`` (initialize, a session: what most gateway tests are
    about) unless asked for ``"auto"`` (server/discover first: MCP 2026-07-28, test_mcp_2026.py)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = create_mcp_http_client(headers=headers)
    return http, Client(streamable_http_client(url, http_client=http), mode=mode, **kw)


# --- per-user header values: keyed upstreams, a server that needs them, an agent that calls it --

SAMPLE, ALICE, BOB, TEAM = "sample-51ab", "alice-canary-c0ffee11", "bob-canary-deadbe22", "team-canary-77aa01"
TOKEN_HEADER = "X-Portcullis-Flow-Token"


@pytest.fixture(scope="module")
def urls():
    with keyed_upstreams(SAMPLE, ALICE, BOB, TEAM) as urls:
        yield urls


def make_server(app, url, keys=("X-Api-Key",), samples=None, name="keyed"):
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": name, "url": url, "auth_type": "per_user_headers",
                                "per_user_header_keys": list(keys),
                                "sample_headers": samples or {"x-api-key": SAMPLE}})
        db.session.commit()
        return server.id


def agent(app, client, server_id, **key_fields):
    _, secret = add_key(app, {server_id: None}, **key_fields)
    rpc = Rpc(client, secret)
    rpc.initialize()
    return rpc


def tool(rpc):
    return rpc.call("tools/call", {"name": "keyed__headers", "arguments": {}}).json["result"]


def auth_required(rpc):
    result = tool(rpc)
    assert result["isError"] is True, result
    return result["_meta"]["portcullis/auth_required"]


def creds(app):
    with app.app_context():
        return [(c.auth_mode, c.status, c.header_keys) for c in db.session.scalars(select(Credential))]


def raw_dump(app) -> str:
    """Every row of every table as the database stores it (no column type decrypts anything)."""
    out = []
    with app.app_context():
        with db.engine.connect() as conn:
            for table in db.metadata.sorted_tables:
                out.extend(repr(tuple(r)) for r in conn.exec_driver_sql(f'SELECT * FROM "{table.name}"'))
    return "\n".join(out)


# --- tools that appear upstream (refresh-tools) ------------------------------------------------

NEW_TOOLS = [{"name": "x", "description": "fails", "inputSchema": {"type": "object"}},
             {"name": "added", "description": "appeared upstream", "inputSchema": {"type": "object"}}]


def stored_tools(app, name):
    with app.app_context():
        return [t["name"] for t in db.session.scalar(db.select(McpServer).filter_by(name=name)).tools]


# --- the sessions world: people, keys, credentials and flows in every state (no upstream) -------

CANARY = "header-value-canary-5e55"
T0 = datetime(2030, 1, 1, 12, 0, 0)


@dataclass
class World:
    admin_id: int
    member_id: int
    other_id: int
    servers: dict   # name -> id
    keys: dict      # name -> id
    session: str    # an MCP session id
    creds: dict     # label -> credential id
    flows: dict     # label -> flow id

    def cid(self, label):
        return f"cred_{self.creds[label]}"

    def fid(self, label):
        return f"flow_{self.flows[label]}"


def _server(name, auth_type="per_user_headers"):
    s = McpServer(name=name, url=f"http://127.0.0.1:9/{name}", auth_type=auth_type,
                  per_user_header_keys=["x-api-key"] if auth_type == "per_user_headers" else [])
    db.session.add(s)
    db.session.flush()
    return s.id


def _key(name, owner_id=None, servers=()):
    k, _ = VirtualKey.generate(name=name, owner_id=owner_id, source="api")
    k.server_grants = [VirtualKeyServerGrant(mcp_server_id=sid) for sid in servers]
    db.session.add(k)
    db.session.flush()
    return k.id


def _cred(mode, identity, server_id, status, minutes):
    col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}[mode]
    c = Credential(auth_mode=mode, mcp_server_id=server_id, auth_kind="headers", status=status,
                   values={"x-api-key": CANARY}, header_keys=["x-api-key"], **{col: identity},
                   created_at=T0 + timedelta(minutes=minutes), updated_at=T0 + timedelta(minutes=minutes))
    db.session.add(c)
    db.session.flush()
    return c.id


def _flow(fid, mode, identity, server_id, minutes, status="pending", expires_in=timedelta(minutes=15)):
    col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}[mode]
    f = Flow(id=fid, kind="headers", auth_mode=mode, mcp_server_id=server_id, status=status,
             expires_at=utcnow() + expires_in, created_at=T0 + timedelta(minutes=minutes),
             updated_at=T0 + timedelta(minutes=minutes), **{col: identity})
    db.session.add(f)
    db.session.flush()
    return f.id


@pytest.fixture
def world(app, admin_id, member_id) -> World:
    other_id = make_user(app, "other@example.com")
    with app.app_context():
        servers = {n: _server(n) for n in ("github", "linear", "jira")}
        servers["plain"] = _server("plain", "none")
        # the grants that make these states consistent (reconciliation would correct any other)
        keys = {"member-key": _key("member-key", member_id, (servers["github"], servers["linear"])),
                "other-key": _key("other-key", other_id, (servers["jira"],)),
                "ci-bot": _key("ci-bot", None, (servers["linear"], servers["jira"]))}
        sess = McpSession(id="mcp-session-abcdef0123456789", virtual_key_id=None, principal="anonymous",
                          protocol_version="2025-11-25")
        db.session.add(sess)
        db.session.flush()
        creds = {
            "member_github": _cred("user", member_id, servers["github"], "active", 1),
            "other_github": _cred("user", other_id, servers["github"], "needs_update", 2),
            "bot_linear": _cred("vk", keys["ci-bot"], servers["linear"], "active", 3),
            "memberkey_jira": _cred("vk", keys["member-key"], servers["jira"], "orphaned", 4),
            "session_github": _cred("session", sess.id, servers["github"], "active", 5),
            "member_linear": _cred("user", member_id, servers["linear"], "needs_update", 6),
        }
        flows = {
            "member_linear": _flow("flowMemberLinear", "user", member_id, servers["linear"], 7),
            "member_github": _flow("flowMemberGithub", "user", member_id, servers["github"], 8),  # superseded
            "bot_jira": _flow("flowBotJira", "vk", keys["ci-bot"], servers["jira"], 9),
            "other_jira_expired": _flow("flowOtherJiraOld", "user", other_id, servers["jira"], 10,
                                        expires_in=-timedelta(seconds=1)),
            "member_jira_used": _flow("flowMemberJiraUsed", "user", member_id, servers["jira"], 11, status="used"),
        }
        db.session.commit()
    return World(admin_id, member_id, other_id, servers, keys, "mcp-session-abcdef0123456789", creds, flows)
