"""Metrics and logs of a real Portcullis under gunicorn (gunicorn.conf.py, two workers, so the
metrics are added up over processes): /metrics scraped and parsed (names, labels, counts that match
the calls made), the JSON log parsed (one object per line, request ids matching the answers',
canary secrets absent)."""
from __future__ import annotations

import json
import subprocess
import tempfile

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_for

METRICS_TOKEN = "metrics-token-canary-31f"
ROOT_SECRET = "root-secret-canary-8d2"
QUERY_CANARY = "query-canary-4a7"
HEADER_CANARY = "header-canary-b19"
BODY_CANARY = "body-canary-e55"
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def served(upstreams, echo):
    tmp = tempfile.mkdtemp(prefix="portcullis-obs-")
    port = free_port()
    setup = f"""
from app.ops.servers import create_server
from app.ops.services import create_service
from app.ops.keys import create_key
from app.upstream.discovery import refresh
server = create_server({{"name": "alpha", "url": "{upstreams['alpha']}"}})
refresh(server)
svc = create_service({{"name": "echo", "base_url": "{echo}", "secret": "{ROOT_SECRET}"}})
down = create_service({{"name": "down", "base_url": "http://127.0.0.1:{free_port()}", "secret": "{ROOT_SECRET}"}})
db.session.flush()
key, secret = create_key({{"name": "agent", "rate_limit_per_minute": 1000,
    "mcp_servers": [{{"server_id": server.id, "tools": None}}],
    "services": [{{"service_id": svc.id, "scope": "write"}}, {{"service_id": down.id, "scope": "read"}}]}}, source="api")
db.session.commit()
print(secret)
"""
    env, key = gateway_instance(tmp, port, setup, PORTCULLIS_LOG_FORMAT="json", PORTCULLIS_WORKERS="2",
                                PORTCULLIS_THREADS="4", PORTCULLIS_METRICS_TOKEN=METRICS_TOKEN,
                                PORTCULLIS_TRUSTED_PROXIES="1", PORTCULLIS_SWEEP="false")
    log_path = f"{tmp}/gunicorn.log"
    with open(log_path, "w") as log:
        proc = serve("wsgi:app", env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), "gunicorn to answer /readyz", 60)
        yield base, key, log_path
    finally:
        stop(proc)


def _ready(base):
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _scrape(base) -> dict[tuple, float]:
    r = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _delta(before, after, name, **labels) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


def test_metrics_count_the_calls_made_and_logs_are_json_with_request_ids(served):
    base, key, log_path = served
    before = _scrape(base)
    sent_ids, mcp_requests = [], 0
    with httpx.Client(base_url=base, timeout=10, headers={"Accept": ACCEPT}) as http:
        def rpc(body, session=None, rid=None):
            nonlocal mcp_requests
            headers = {"Authorization": f"Bearer {key}"}
            if session:
                headers.update({"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
            if rid:
                headers["X-Request-Id"] = rid
                sent_ids.append(rid)
            mcp_requests += 1
            r = http.post("/mcp", json=body, headers=headers)
            if rid:
                assert r.headers["X-Request-Id"] == rid  # a trusted proxy's id is kept and echoed
            return r

        r = rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        session = r.headers["Mcp-Session-Id"]
        for i in range(5):
            r = rpc({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                     "params": {"name": "alpha__echo", "arguments": {"text": BODY_CANARY}}}, session, f"mcp-ok-{i}")
            assert r.json()["result"]["content"][0]["text"].endswith(BODY_CANARY)
        r = rpc({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "alpha__fail"}}, session)
        assert r.json()["result"]["isError"] is True
        r = rpc({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "nope__made-up-tool"}},
                session)
        assert r.json()["error"]["code"] == -32602

        for i in range(4):
            r = http.post(f"/proxy/echo/things?key={key}&q={QUERY_CANARY}", content=BODY_CANARY,
                          headers={"X-Canary": HEADER_CANARY, "X-Request-Id": f"proxy-ok-{i}"})
            assert r.status_code == 200 and r.headers["X-Request-Id"] == f"proxy-ok-{i}"
            sent_ids.append(f"proxy-ok-{i}")
        for _ in range(2):  # a made-up service: counted, but never as a label of its own
            assert http.get("/proxy/made-up-service/x", headers={"X-Virtual-Key": key}).status_code == 403
        r = http.get("/proxy/down/x", headers={"X-Virtual-Key": key, "X-Request-Id": "proxy-down-1"})
        assert r.status_code == 502
        generated = http.get("/healthz").headers["X-Request-Id"]

    after = _scrape(base)
    calls = "portcullis_tool_calls_total"
    assert _delta(before, after, calls, server="alpha", tool="echo", outcome="ok") == 5
    assert _delta(before, after, calls, server="alpha", tool="fail", outcome="tool_error") == 1
    assert _delta(before, after, calls, server="", tool="", outcome="unknown_tool") == 1
    proxied = "portcullis_proxy_requests_total"
    assert _delta(before, after, proxied, service="echo", status="200") == 4
    assert _delta(before, after, proxied, service="", status="403") == 2
    assert _delta(before, after, proxied, service="down", status="502") == 1
    assert _delta(before, after, "portcullis_upstream_errors_total", route="proxy", target="down") == 1
    seconds = "portcullis_request_duration_seconds_count"
    assert _delta(before, after, seconds, route="mcp") == mcp_requests
    assert _delta(before, after, seconds, route="proxy") == 7
    assert _delta(before, after, "portcullis_request_duration_seconds_bucket", route="proxy", le="+Inf") == 7
    assert not any("made-up" in str(labels) for _, labels in after)

    def logged():
        lines = [json.loads(line) for line in open(log_path) if line.strip()]  # every line is JSON
        ids = {entry.get("request_id") for entry in lines}
        return lines if set(sent_ids) | {generated} <= ids else None

    lines = wait_for(logged, "the access log lines of every request")
    access = {e["request_id"]: e for e in lines if e["logger"] == "gunicorn.access"}
    for rid in sent_ids:
        assert access[rid]["status"] in (200, 502) and access[rid]["path"] in ("/mcp", "/proxy/echo/things")
    assert access["proxy-ok-0"]["path"] == "/proxy/echo/things"  # the path, never the query
    warning = [e for e in lines if e["logger"] == "portcullis.proxy" and e["level"] == "warning"]
    assert warning and warning[0]["request_id"] == "proxy-down-1"  # an app line names its request
    text = open(log_path).read()
    for canary in (key, ROOT_SECRET, QUERY_CANARY, HEADER_CANARY, BODY_CANARY, METRICS_TOKEN):
        assert canary not in text
