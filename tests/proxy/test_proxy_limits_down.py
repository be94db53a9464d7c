"""The proxy when its rate-limit store is really down: Portcullis under gunicorn with a REDIS_URL
whose port nobody listens on (no limiter method replaced). Fails closed with 503
rate_limit_unavailable and one warning; PORTCULLIS_RATE_LIMIT_FAIL_OPEN=true lets requests through
unlimited instead."""
from __future__ import annotations

import subprocess

import httpx

from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_ready
from tests.support.proxy import seen_headers


def serve_with_redis_down(tmp_path, env: dict, port: int, **settings: str):
    closed = free_port()  # bound once, then released: nothing listens there
    log = tmp_path / f"gunicorn-{len(list(tmp_path.glob('gunicorn-*.log')))}.log"
    proc = serve("wsgi:app", {**env, "REDIS_URL": f"redis://127.0.0.1:{closed}/0", **settings},
                 stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait_ready(proc, f"http://127.0.0.1:{port}/login")
    return proc, log


def test_an_unreachable_redis_fails_closed_or_open_as_configured(tmp_path, echo):
    port = free_port()
    env, secret = gateway_instance(str(tmp_path), port, (
        "from app.ops.services import create_service\nfrom app.ops.keys import create_key\n"
        f"s = create_service({{'name': 'echo', 'base_url': '{echo}', 'secret': 'root-secret-down'}})\n"
        "db.session.flush()\n"
        "k, secret = create_key({'name': 'agent', 'services': [{'service_id': s.id, 'scope': 'read'}]}, source='api')\n"
        "db.session.commit()\nprint(secret)"))
    url, headers = f"http://127.0.0.1:{port}/proxy/echo/x", {"X-Virtual-Key": secret}

    proc, log = serve_with_redis_down(tmp_path, env, port)
    try:
        answers = [httpx.get(url, headers=headers, timeout=30) for _ in range(2)]
        # the checks before the limit still answer as usual (a refused request counts nothing)
        refused = httpx.get(url, headers={"X-Virtual-Key": secret + "x"}, timeout=30)
    finally:
        stop(proc)
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "rate_limit_unavailable" and r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "5" and "RateLimit-Limit" not in r.headers
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_key"
    text = log.read_text()
    assert text.count("proxy rate limits unavailable (ConnectionError") == 1, text  # at most once a minute
    assert "Traceback" not in text and secret not in text

    proc, log = serve_with_redis_down(tmp_path, env, port, PORTCULLIS_RATE_LIMIT_FAIL_OPEN="true")
    try:
        r = httpx.get(url, headers=headers, timeout=30)
    finally:
        stop(proc)
    assert r.status_code == 200, r.text  # opted in: passes, unlimited
    assert "RateLimit-Limit" not in r.headers and seen_headers(r.json())["x-api-key"] == ["root-secret-down"]
    assert "Traceback" not in log.read_text()
