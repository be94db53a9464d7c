"""The deployment files: deploy/nginx.conf passes `nginx -t` (with the compose service names
pointed at loopback), compose.yaml runs two instances on one PostgreSQL and Redis behind nginx,
each with the same secrets, and the image runs gunicorn as a non-root user."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import NGINX

ROOT = Path(__file__).parents[2]


def test_nginx_conf_is_valid(tmp_path):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Request-Id $request_id;" in conf and "proxy_buffering off;" in conf
    (tmp_path / "nginx.conf").write_text(conf.replace("portcullis1:8080", "127.0.0.1:9").replace("portcullis2:8080", "127.0.0.1:10"))
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                        "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_compose_runs_two_instances_with_the_same_secrets_behind_nginx():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "nginx", "migrate", "portcullis1", "portcullis2"} <= set(services)
    one, two = services["portcullis1"], services["portcullis2"]
    assert one["environment"] == two["environment"]
    env = one["environment"]
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?") and env["PORTCULLIS_ENCRYPTION_KEY"].startswith(
        "${PORTCULLIS_ENCRYPTION_KEY:?")  # required, never a default: else each instance makes its own
    assert env["REDIS_URL"].startswith("redis://redis") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["PORTCULLIS_TRUSTED_PROXIES"] == "1"
    assert one["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "db upgrade" in " ".join(services["migrate"]["command"])
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]


def test_the_image_runs_gunicorn_as_a_non_root_user():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "RUN pip install --no-cache-dir -r requirements.txt" in lines  # make run's install step
    assert lines[-1] == 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]'
