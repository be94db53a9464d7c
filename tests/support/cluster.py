"""Several Portcullis instances as a team runs them: two gunicorn instances (gunicorn.conf.py,
two workers each) on one PostgreSQL database and one Redis, behind Debian's nginx. Used by
tests/cluster/ and bench/load.py.

PostgreSQL is reached through ``Relay``, a small TCP relay in this process, so a test can make
the database unreachable (and reachable again) without touching the machine's PostgreSQL.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from tests.support.mcp import free_port, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@cluster.example", "cluster admin password 1"

NGINX_CONF = """
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream portcullis {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://portcullis;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


class Relay:
    """127.0.0.1:<port> -> target, byte for byte; ``cut()`` closes the port and every connection
    (clients are refused at once), ``restore()`` opens the same port again."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def fresh_database(url: str, name: str) -> str:
    import psycopg

    server = url.rsplit("/", 1)[0]
    with psycopg.connect(server + "/postgres", autocommit=True, connect_timeout=5) as conn:  # the maintenance db
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server + "/" + name


def drop_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class Cluster:
    """``instances`` (base URLs), ``balancer`` (nginx's URL), ``env`` (what the instances run
    with, for CLI commands), ``relay`` (PostgreSQL), ``api`` (an admin's httpx client on the balancer)."""

    def __init__(self, pg_url: str, redis_url: str, n: int = 2, workers: int = 2, threads: int = 4,
                 extra_env: dict | None = None, balancer_port: int | None = None):
        if NGINX is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.dir = tempfile.mkdtemp(prefix="portcullis-cluster-")
        self.procs: list[subprocess.Popen] = []
        self.database = fresh_database(pg_url, pg_url.rsplit("/", 1)[1] + "_cluster")
        pg = httpx.URL(self.database.replace("postgresql://", "http://", 1))
        self.relay = Relay((pg.host, pg.port or 5432))
        self.direct_database = self.database
        relayed = self.database.replace(f"{pg.host}:{pg.port or 5432}", f"127.0.0.1:{self.relay.port}", 1)
        self.balancer_port = balancer_port or free_port()  # given: its URL is registered somewhere first
        self.balancer = f"http://127.0.0.1:{self.balancer_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PORTCULLIS_", "PROMETHEUS_"))},
            "DATABASE_URL": relayed, "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_urlsafe(32), "PORTCULLIS_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "PORTCULLIS_RATE_LIMIT_PREFIX": "cluster-" + uuid.uuid4().hex[:8],
            "PORTCULLIS_BASE_URL": self.balancer, "PORTCULLIS_TRUSTED_PROXIES": "1",
            # a long expiry: only the invalidation bus can explain an edit seen within a second
            "PORTCULLIS_CONFIG_CACHE_SECONDS": "60",
            "PORTCULLIS_WORKERS": str(workers), "PORTCULLIS_THREADS": str(threads),
            "PORTCULLIS_SWEEP": "false", "PORTCULLIS_LOG_FORMAT": "json",
            "PORTCULLIS_INSTANCE_PATH": f"{self.dir}/instance",
            **(extra_env or {}),
        }
        try:
            self._start(n)
        except BaseException:
            self.close()
            raise

    def flask(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def _start(self, n: int) -> None:
        for step in (("db", "upgrade"), ("setup",),
                     ("create-admin", "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)):
            r = self.flask(*step)
            if r.returncode:
                raise RuntimeError(f"{step}: {r.stderr[-2000:]}")
        self.instances, self.logs = [], []
        for i in range(n):
            port = free_port()
            log = f"{self.dir}/instance{i}.log"
            self.logs.append(log)
            with open(log, "w") as fh:
                self.procs.append(subprocess.Popen(
                    [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                    env={**self.env, "PORT": str(port)}, stdout=fh, stderr=subprocess.STDOUT))
            self.instances.append(f"http://127.0.0.1:{port}")
        servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in self.instances)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = f"{self.dir}/nginx.conf"
        Path(conf).write_text(NGINX_CONF.format(user=user, dir=self.dir, servers=servers, port=self.balancer_port))
        self.procs.append(subprocess.Popen([NGINX, "-c", conf, "-p", self.dir, "-g", "daemon off;"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for url in (*self.instances, self.balancer):
            wait_for(lambda url=url: _ok(url + "/readyz"), f"{url}/readyz", 90)
        token = httpx.post(self.balancer + "/api/v1/tokens", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                           timeout=10)
        token.raise_for_status()
        self.token = token.json()["token"]
        self.api = httpx.Client(base_url=self.balancer + "/api/v1", timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})

    def instance_api(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.instances[i] + "/api/v1", timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"})

    def worker_pids(self) -> list[int]:
        """The gunicorn workers of every instance."""
        out = []
        for proc in self.procs[:len(self.instances)]:
            try:
                out += [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            except OSError:
                pass
        return out

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.relay.close()
        if getattr(self, "api", None) is not None:
            self.api.close()
        shutil.rmtree(self.dir, ignore_errors=True)
