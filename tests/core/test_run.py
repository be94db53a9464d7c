"""What `make run` does, for real: upgrade, setup (the first admin and the OAuth signing key), gunicorn with gunicorn.conf.py; then
log in with the printed one-time password. Also: no secret reaches the process's logs."""
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.mcp import free_port, wait_for, wait_ready

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
CANARY = "canary-0b8e6f-run"


def fresh_postgres_database(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def served(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("SECRET_KEY", "PORTCULLIS_ENCRYPTION_KEY", "PORTCULLIS_ADMIN_EMAIL",
                        "PORTCULLIS_ADMIN_PASSWORD", "PORTCULLIS_BASE_URL")}
    env.update(PORTCULLIS_INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(port))
    env.pop("DATABASE_URL", None)
    if os.environ.get("TEST_DATABASE_URL"):  # the PostgreSQL run: a database of this test's own
        env["DATABASE_URL"] = fresh_postgres_database(os.environ["TEST_DATABASE_URL"], "portcullis_run_test")
    flask = [str(BIN / "flask"), "--app", "wsgi"]
    up = subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "generated a strong one" in up.stderr  # first run: secrets created and announced
    assert (tmp_path / "instance" / "secrets.env").exists()
    admin = subprocess.run([*flask, "setup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert admin.returncode == 0, admin.stderr
    assert "Created the OAuth signing key" in admin.stdout  # once, before any worker starts
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/login")
        yield f"http://127.0.0.1:{port}", admin.stdout, tmp_path / "gunicorn.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_fresh_instance_is_private(tmp_path):
    """`flask db upgrade` on a fresh SQLite instance (as `make run`), under the usual umask 022:
    instance/ is 0700, the database, its journal files and secrets.env 0600. A database left
    readable by others is narrowed at the next start, and the log says so."""
    instance = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items()
           if k not in ("SECRET_KEY", "PORTCULLIS_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL")}
    env["PORTCULLIS_INSTANCE_PATH"] = str(instance)

    def upgrade() -> str:
        run = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, umask=0o022)
        assert run.returncode == 0, run.stderr
        return run.stderr

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    upgrade()
    assert mode(instance) == 0o700
    files = sorted(p.name for p in instance.iterdir())
    assert "portcullis.db" in files and "secrets.env" in files
    assert {name: mode(instance / name) for name in files} == {name: 0o600 for name in files}
    (instance / "portcullis.db").chmod(0o644)
    instance.chmod(0o755)
    log = upgrade()
    assert mode(instance) == 0o700 and mode(instance / "portcullis.db") == 0o600
    assert f"{instance / 'portcullis.db'} was open to others (mode 644): changed to 600" in log


def test_first_run_login_with_printed_password_and_no_secret_in_logs(served):
    base, printed, log_path = served
    email = re.search(r"e-mail:\s+(\S+)", printed).group(1)
    password = re.search(r"password: (\S+)", printed).group(1)
    with httpx.Client(base_url=base, timeout=5) as web:
        page = web.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = web.post("/login", data={"email": email, "password": password, "csrf_token": csrf})
        assert r.status_code == 302 and r.headers["location"].endswith("/account/password")
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        # no API token for a one-time password: it is changed on the dashboard first
        r = web.post("/api/v1/tokens", json={"email": email, "password": password})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "password_change_required")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/account/password").text).group(1)
        r = web.post("/account/password", data={"current_password": password, "new_password": CANARY + "-pw",
                                                "confirm_password": CANARY + "-pw", "csrf_token": csrf})
        assert r.status_code == 302
    with httpx.Client(base_url=base, timeout=5) as api:
        token = api.post("/api/v1/tokens", json={"email": email, "password": CANARY + "-pw"}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = api.post("/api/v1/services", headers=auth,
                     json={"name": "billing", "base_url": "http://127.0.0.1:9", "secret": CANARY})
        assert r.status_code == 201
        api.get(f"/api/v1/services?key={CANARY}", headers=auth)  # a secret in a query string
    # the access log is written after each answer: wait for the last request's line
    text = wait_for(lambda: t if '"GET /api/v1/services HTTP/1.1"' in (t := log_path.read_text()) else "",
                    "the access log line of the last request")
    assert '"POST /api/v1/services HTTP/1.1" 201' in text  # the access log is on...
    assert CANARY not in text and token not in text and password not in text  # ...and holds no secret
