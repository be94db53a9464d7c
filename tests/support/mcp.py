"""Fixtures for the gateway tests: real upstream MCP servers (the official SDK) started once
per test session on free loopback ports, a deliberately faulty upstream, and helpers to
register servers and keys through the ops layer."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.extensions import db

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


def gateway_instance(tmp: str, port: int, setup: str, **env_extra: str) -> tuple[dict, str]:
    """A fresh SQLite instance under ``tmp`` prepared as ``make run`` would (``flask db upgrade``),
    then ``setup`` run in an app context (Python lines; ``create_app`` and ``db`` are there).
    Returns the environment to serve it with (gunicorn: ``serve``) and what ``setup`` printed last."""
    env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": f"{tmp}/instance", "PORT": str(port), **env_extra}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
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
