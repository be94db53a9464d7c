"""Several instances behave as one: a key revoked through one instance is refused by the other
within a second (the invalidation bus; the expiry is set to 60 s here), rate limits are shared, one
sweeper runs at a time, /readyz follows PostgreSQL, nginx's request ids reach the answers."""
from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from app.sweep import LEASE_KEY
from tests.support.mcp import wait_for

ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def team(cluster, upstreams, echo):
    r = cluster.api.post("/services", json={"name": "echo", "base_url": echo, "secret": "cluster-root-secret"})
    assert r.status_code == 201, r.text
    s = cluster.api.post("/mcp-servers", json={"name": "alpha", "url": upstreams["alpha"]})
    assert s.status_code == 201, s.text
    return {"service": r.json()["id"], "server": s.json()["id"]}


def _key(cluster, team, **fields) -> tuple[int, str]:
    r = cluster.api.post("/virtual-keys", json={
        "name": "agent", "services": [{"service_id": team["service"], "scope": "write"}],
        "mcp_servers": [{"server_id": team["server"], "tools": None}], **fields})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def _proxy(base: str, key: str) -> int:
    return httpx.get(base + "/proxy/echo/x", headers={"X-Virtual-Key": key}, timeout=10).status_code


def _tool_call(base: str, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT}
    init = httpx.post(base + "/mcp", headers=headers, timeout=10, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    if init.status_code != 200:
        return {"status": init.status_code}
    headers.update({"Mcp-Session-Id": init.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
    r = httpx.post(base + "/mcp", headers=headers, timeout=10, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "alpha__echo", "arguments": {"text": "x"}}})
    return {"status": r.status_code, **r.json()}


def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_a_second(cluster, team):
    one, other = cluster.instances
    key_id, key = _key(cluster, team)
    for _ in range(4):  # every worker of the other instance has the key in its snapshot
        assert _proxy(other, key) == 200
        assert _tool_call(other, key)["status"] == 200
    r = cluster.instance_api(0).patch(f"/virtual-keys/{key_id}", json={"active": False})
    assert r.status_code == 200, r.text
    revoked_at = time.monotonic()
    # every worker of the other instance refuses it (each poll meets one of them)
    refused = wait_for(lambda: _proxy(other, key) == 401 and all(_proxy(other, key) == 401 for _ in range(6))
                       and time.monotonic(), "the other instance to refuse the key", 5)
    assert refused - revoked_at < 1.0, f"refused after {refused - revoked_at:.2f} s"
    assert _tool_call(other, key)["status"] == 401


def test_rate_limits_are_shared_by_the_instances(cluster, team):
    _, key = _key(cluster, team, rate_limit_per_minute=6)
    one, other = cluster.instances
    assert [_proxy(base, key) for base in (one, other, one, other, one, other)] == [200] * 6
    assert _proxy(one, key) == 429 and _proxy(other, key) == 429
    assert _proxy(cluster.balancer, key) == 429


def test_one_sweeper_at_a_time(cluster):
    """The lease is a PostgreSQL advisory lock: while another holds it (here the test, as another
    instance's sweeper would), a run skips; once released, a run sweeps."""
    with psycopg.connect(cluster.direct_database, connect_timeout=5) as conn:
        assert conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LEASE_KEY,)).fetchone()[0]
        runs = [None, None]

        def sweep(i):
            runs[i] = cluster.flask("sweep")

        threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(r.returncode == 0 and "another instance is sweeping; skipped" in r.stdout for r in runs), runs
        conn.rollback()  # the lease is free again
    r = cluster.flask("sweep")
    assert r.returncode == 0 and r.stdout.startswith("deleted"), r.stdout + r.stderr


def test_readyz_turns_503_when_postgresql_is_unreachable_and_back(cluster):
    for base in (*cluster.instances, cluster.balancer):
        assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    cluster.relay.cut()
    try:
        for base in cluster.instances:
            r = wait_for(lambda base=base: (a := httpx.get(base + "/readyz", timeout=10)).status_code == 503 and a,
                         f"{base}/readyz to turn 503", 20)
            assert r.json()["failing"][0] == "database" and r.json()["checks"]["database"] == "unreachable"
            assert "postgres" not in r.text and str(cluster.relay.port) not in r.text
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200  # the process still answers
    finally:
        cluster.relay.restore()
    for base in (*cluster.instances, cluster.balancer):
        wait_for(lambda base=base: httpx.get(base + "/readyz", timeout=10).status_code == 200,
                 f"{base}/readyz back to 200", 20)


def test_the_balancers_request_id_is_echoed_and_metrics_add_up_over_workers(cluster, team):
    _, key = _key(cluster, team)
    r = httpx.get(cluster.balancer + "/proxy/echo/x", headers={"X-Virtual-Key": key}, timeout=10)
    assert r.status_code == 200 and len(r.headers["X-Request-Id"]) == 32  # nginx's $request_id
    for base in cluster.instances:
        before = _count(base)
        for _ in range(8):
            assert _proxy(base, key) == 200
        assert _count(base) - before == 8  # whichever worker answered the scrape


def _count(base) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "portcullis_proxy_requests_total" and s.labels == {"service": "echo", "status": "200"})


@pytest.mark.parametrize("start, finish", [(0, 1), (1, 0)])
def test_sso_sign_in_through_the_provider_works_on_both_instances(cluster, start, finish):
    """Single sign-on through oidc-provider: the sign-in starts on one instance and its callback
    is answered by the other (the state travels in the cookie both instances can read: same
    SECRET_KEY); the login then works on both, and through nginx."""
    from tests.cluster.conftest import SSO_CALLBACK
    from tests.support.oidc_provider import HttpxBrowser

    first, second = cluster.instances[start], cluster.instances[finish]
    with httpx.Client(timeout=30) as browser:  # one cookie jar: 127.0.0.1 is one site for every port
        begun = browser.get(first + "/login/sso")
        assert begun.status_code == 302, begun.text
        result = HttpxBrowser("bob@example.com").authorize(begun.headers["Location"],
                                                            stop_at=cluster.balancer + SSO_CALLBACK)
        assert result.code, result.params
        back = httpx.URL(result.url)
        done = browser.get(second + SSO_CALLBACK, params=back.params)
        assert done.status_code == 302 and "/login" not in done.headers["Location"], done.text[:300]
        for base in (*cluster.instances, cluster.balancer):
            page = browser.get(base + "/keys")
            assert page.status_code == 200, (base, page.status_code)
            assert "bob@example.com" in page.text
