"""The proxy under real gunicorn (the project's gunicorn.conf.py): two instances on the test
database sharing one Redis for rate limits. Streaming both ways as it happens, large bodies, an
upstream that breaks off, one budget across instances, and no key in the server logs."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.mcp import free_port, stop, wait_for
from tests.support.proxy import add_proxy_key, add_service
from tests.upstream.http_echo import PATTERN, gate

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PREFIX = f"test-{uuid.uuid4().hex[:12]}"  # this run's counters only: other runs may share the Redis
CACHE_SECONDS = 0.2


def _clear_budgets():
    """Forget this run's rate-limit counters (key ids restart between tests)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*/{PREFIX}/*"))
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {REDIS_URL}: {e}")
    if keys:
        client.delete(*keys)


def _wait(proc, url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def instances(app, encryption_key, tmp_path_factory):
    _clear_budgets()
    tmp = tmp_path_factory.mktemp("served")
    procs, bases, logs = [], [], []
    for name in ("a", "b"):
        port = free_port()
        env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": str(tmp / name), "PORT": str(port),
               "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "SECRET_KEY": "served-test-secret",
               "PORTCULLIS_ENCRYPTION_KEY": encryption_key, "REDIS_URL": REDIS_URL, "PORTCULLIS_RATE_LIMIT_PREFIX": PREFIX,
               "PORTCULLIS_CONFIG_CACHE_SECONDS": str(CACHE_SECONDS), "PORTCULLIS_THREADS": "4"}
        log = tmp / f"{name}.log"
        procs.append(subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                                      env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))
        bases.append(f"http://127.0.0.1:{port}")
        logs.append(log)
    try:
        for proc, base in zip(procs, bases):
            _wait(proc, base + "/login")
        yield bases, logs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # gunicorn's quick shutdown
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(proc)


def _seen_by(app, bases, service_id):
    """Wait until every instance's snapshot holds the service (an instance may serve a snapshot
    loaded before it was added, for PORTCULLIS_CONFIG_CACHE_SECONDS): a probe key of its own,
    with a budget of its own, reaches it. Keys themselves are read on first sight, not cached
    ahead, so the test's key is then known too."""
    _, probe = add_proxy_key(app, {service_id: "read"}, rate_limit_per_minute=100_000)
    for base in bases:
        wait_for(lambda: httpx.get(base + "/proxy/echo/x", headers={"X-Virtual-Key": probe},
                                   timeout=10).status_code == 200, f"{base} to see the new service")


@pytest.fixture
def served_key(app, echo, instances):
    _clear_budgets()
    sid = add_service(app, "echo", echo + "/base")
    key = add_proxy_key(app, {sid: "write"}, rate_limit_per_minute=1000)
    _seen_by(app, instances[0], sid)
    return key


def test_streams_both_ways_as_it_happens(instances, served_key):
    (base, _), _ = instances
    _, secret = served_key
    headers = {"X-Virtual-Key": secret}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        # the upstream holds the rest back until the client has the first chunk: relayed, not buffered
        name = uuid.uuid4().hex
        with http.stream("GET", f"/proxy/echo/stream?chunks=3&gate={name}") as r:
            assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
            lines = r.iter_lines()
            arrivals = [next(lines)]
            assert not gate(name).is_set()  # the upstream is still waiting
            gate(name).set()
            arrivals += list(lines)
        assert arrivals == ["chunk 0", "chunk 1", "chunk 2"]
        assert len(r.headers.get_list("date")) == 1 and len(r.headers.get_list("server")) == 1

        # the client sends the rest only once the upstream has the first bytes: streamed, not buffered
        name, reached = uuid.uuid4().hex, []

        def gated_body():
            yield b"a" * 1_000_000
            reached.append(gate(name).wait(20))
            yield b"b" * 1_000_000

        r = http.post(f"/proxy/echo/upload?gate={name}", content=gated_body())  # chunked, length unknown
        body = b"a" * 1_000_000 + b"b" * 1_000_000
        assert r.status_code == 200, r.text
        assert r.json()["chunked"] and r.json()["body_length"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert reached == [True]  # the upstream had the first bytes before the client sent the rest

        size = 24 * 1024 * 1024
        payload = PATTERN * (size // len(PATTERN))
        r = http.put("/proxy/echo/upload", content=payload)
        assert r.json()["body_length"] == size and r.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
        got = hashlib.sha256()
        with http.stream("GET", f"/proxy/echo/download?bytes={size}&chunked=1") as r:
            for chunk in r.iter_raw():
                got.update(chunk)
        assert got.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_an_answer_broken_off_upstream_is_not_passed_off_as_complete(instances, served_key):
    (base, _), (log, _) = instances
    _, secret = served_key
    with httpx.Client(base_url=base, headers={"X-Virtual-Key": secret}, timeout=10) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/proxy/echo/break?bytes=200000")
        assert http.get("/proxy/echo/x").status_code == 200  # the instance carries on
    assert "Traceback" not in log.read_text()


def test_two_instances_share_one_budget_through_redis(app, echo, instances):
    _clear_budgets()
    (a, b), _ = instances
    sid = add_service(app, "echo", echo)
    _, secret = add_proxy_key(app, {sid: "read"}, rate_limit_per_minute=4)
    _seen_by(app, (a, b), sid)
    headers = {"Authorization": f"Bearer {secret}"}
    seen = []
    for base in (a, b, a, b, a, b):
        r = httpx.get(base + "/proxy/echo/x", headers=headers, timeout=10)
        seen.append((r.status_code, r.headers.get("ratelimit-remaining")))
    assert seen == [(200, "3"), (200, "2"), (200, "1"), (200, "0"), (429, "0"), (429, "0")]
    assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    import redis

    stored = list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"*/{PREFIX}/portcullis-proxy-key/*"))
    assert stored  # the counters live in Redis, under this deployment's PORTCULLIS_RATE_LIMIT_PREFIX


def test_no_key_in_the_server_logs(instances, served_key):
    bases, logs = instances
    _, secret = served_key
    refused = '"GET /proxy/echo/x HTTP/1.1" 401'
    before = [log.read_text().count(refused) for log in logs]
    for base in bases:
        assert httpx.get(f"{base}/proxy/echo/x?key={secret}&q=1", timeout=10).status_code == 200
        assert httpx.get(f"{base}/proxy/echo/x?key={secret}zz", timeout=10).status_code == 401
    for log, n in zip(logs, before):
        # access log on, without query strings (written after each answer: wait for the last one)
        text = wait_for(lambda: t if (t := log.read_text()).count(refused) > n else "", f"the access log of {log}")
        assert '"GET /proxy/echo/x HTTP/1.1" 200' in text
        assert secret not in text and "q=1" not in text
