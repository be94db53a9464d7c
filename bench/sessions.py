"""How fast GET /api/v1/sessions answers with 100 000 credentials and 10 000 flows on PostgreSQL.

Resets the schema of the PostgreSQL database given (default: the local ``bench_sessions``),
builds it with the real migrations, fills it with bulk inserts (one value encrypted once, its
ciphertext reused for every row; the timestamps spread over 90 days), ANALYZEs, then measures
the real app in-process through Flask's test client (the whole request: routing, token check,
the queries, JSON; no HTTP server or network in the figure). Each case gets 3 warm-up requests,
then the median (and p90) of ``--requests`` requests:

1. filtered, searched, paginated: an admin's second page of active or needs_update ``user``
   rows whose e-mail contains ``user-12`` (111 people);
2. the first page, unfiltered (an admin: every row);
3. a member's first page (their own rows only), for comparison.

Figures 1 and 2 are checked against the target (median under 50 ms).

usage: .venv/bin/python bench/sessions.py [--database-url URL] [--requests 30] [--keep]
(--keep: reuse rows already there from an earlier run instead of rebuilding them)
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_sessions"
TARGET_MS = 50.0
USERS, SERVERS, OWNED_KEYS, FREE_KEYS, MCP_SESSIONS = 2_000, 200, 1_500, 1_500, 1_000
CREDENTIALS = {"user": 70_000, "vk": 25_000, "session": 5_000}
FLOWS = 10_000
BATCH = 5_000


def build(app, rng: random.Random) -> None:
    from sqlalchemy import JSON, Text, column, insert, table, text

    from app.crypto import keyring
    from app.extensions import db
    from app.models.base import digest, utcnow
    from tests.conftest import reset_schema

    reset_schema(app)
    now = utcnow()
    start = now - timedelta(days=90)

    def when() -> object:
        return start + timedelta(seconds=rng.randrange(90 * 86400))

    with app.app_context():
        conn = db.session.connection()
        conn.execute(text(
            "INSERT INTO users (id, email, password_hash, role, active, must_change_password, created_at, updated_at) "
            "SELECT i, 'user-' || i || '@example.com', 'x', CASE WHEN i = 1 THEN 'admin' ELSE 'member' END, true, "
            "false, now(), now() FROM generate_series(1, :n) i"), {"n": USERS})
        conn.execute(text(
            "INSERT INTO mcp_servers (id, name, url, auth_type, shared_headers, per_user_header_keys, "
            "allow_on_all_virtual_keys, enabled, tools, connect_timeout, read_timeout, created_at, updated_at) "
            "SELECT i, 'srv-' || i, 'http://127.0.0.1:9/mcp', 'per_user_headers', :empty, '[\"x-api-key\"]', "
            "false, true, '[]', 5, 30, now(), now() FROM generate_series(1, :n) i"),
            {"n": SERVERS, "empty": keyring().encrypt("{}")})
        conn.execute(text(
            "INSERT INTO virtual_keys (id, name, key_hash, key_prefix, owner_id, source, rate_limit_per_minute, "
            "active, created_at, updated_at) "
            "SELECT i, 'key-' || i, md5(i::text) || md5((i + 1)::text), 'vk_' || i, "
            "CASE WHEN i <= :owned THEN 2 + (i % (:users - 1)) END, 'api', 60, true, now(), now() "
            "FROM generate_series(1, :n) i"), {"owned": OWNED_KEYS, "users": USERS, "n": OWNED_KEYS + FREE_KEYS})
        conn.execute(text(
            "INSERT INTO mcp_sessions (id, principal, protocol_version, client_info, capabilities, created_at) "
            "SELECT 'sess-' || md5(i::text), 'anonymous', '2025-11-25', '{}', '{}', now() "
            "FROM generate_series(1, :n) i"),
            {"n": MCP_SESSIONS})
        for name in ("users", "mcp_servers", "virtual_keys"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"))
        session_ids = [r[0] for r in conn.execute(text("SELECT id FROM mcp_sessions ORDER BY id"))]

        # one value encrypted once; every row carries the same ciphertext
        ciphertext = keyring().encrypt('{"x-api-key":"bench-value"}')
        creds = table("credentials", *[column(c) for c in (
            "auth_mode", "user_id", "virtual_key_id", "session_id", "mcp_server_id", "auth_kind", "status",
            "header_keys", "created_at", "updated_at", "status_changed_at")], column("values", Text))
        creds.c.header_keys.type = JSON()
        identities = {"user": list(range(2, USERS + 1)), "vk": list(range(OWNED_KEYS + 1, OWNED_KEYS + FREE_KEYS + 1)),
                      "session": session_ids}
        col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}
        taken: set[tuple] = set()
        rows = []
        for mode, n in CREDENTIALS.items():
            servers = SERVERS if mode != "session" else 5
            for _ in range(n):
                while True:
                    binding = (mode, rng.choice(identities[mode]), rng.randint(1, servers))
                    if binding not in taken:
                        taken.add(binding)
                        break
                created = when()
                status = rng.choices(("active", "needs_update", "orphaned"), (85, 10, 5))[0]
                rows.append({"auth_mode": mode, "user_id": None, "virtual_key_id": None, "session_id": None,
                             col[mode]: binding[1], "mcp_server_id": binding[2], "auth_kind": "headers",
                             "status": status, "values": ciphertext, "header_keys": ["x-api-key"],
                             "created_at": created, "updated_at": created, "status_changed_at": created})
        rng.shuffle(rows)
        for i in range(0, len(rows), BATCH):
            conn.execute(insert(creds), rows[i:i + BATCH])

        flows = table("flows", *[column(c) for c in (
            "id", "kind", "auth_mode", "user_id", "virtual_key_id", "session_id", "mcp_server_id", "status",
            "token_hash", "expires_at", "created_at", "updated_at")])
        pending: set[tuple] = set()
        rows = []
        bindings = sorted(taken)
        i = 0
        while len(rows) < FLOWS:
            i += 1
            # a third on bindings that have a credential (hidden when it is active), the rest on new ones
            if i % 3 == 0:
                binding = rng.choice(bindings)
            else:
                mode = rng.choices(("user", "vk"), (3, 1))[0]
                binding = (mode, rng.choice(identities[mode]), rng.randint(1, SERVERS))
            status = "used" if i % 10 == 0 else "pending"
            if status == "pending":
                if binding in pending:
                    continue
                pending.add(binding)
            mode = binding[0]
            created = now - timedelta(minutes=rng.randrange(60 * 24 * 3))
            expires = now + timedelta(minutes=15) if i % 4 else created + timedelta(minutes=15)  # a quarter expired
            rows.append({"id": digest(f"flow-{i}")[:32], "kind": "headers", "auth_mode": mode, "user_id": None,
                         "virtual_key_id": None, "session_id": None, col[mode]: binding[1],
                         "mcp_server_id": binding[2], "status": status,
                         "token_hash": None if mode == "user" else digest(f"t{i}"),
                         "expires_at": expires, "created_at": created, "updated_at": created})
        for i in range(0, len(rows), BATCH):
            conn.execute(insert(flows), rows[i:i + BATCH])
        db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))


def measure(client, path: str, token: str, n: int) -> tuple[float, float, dict]:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        r = client.get(path, headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path, headers=headers)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], r.get_json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.requests < 20:
        parser.error("--requests must be at least 20")

    from cryptography.fernet import Fernet
    from sqlalchemy import func, select

    from app import create_app
    from app.extensions import db
    from app.models import Credential, Flow
    from tests.conftest import token_for

    key_file = Path(tempfile.gettempdir()) / "portcullis-bench-sessions.key"
    if not (args.keep and key_file.exists()):
        key_file.write_text(Fernet.generate_key().decode())
    app = create_app({"INSTANCE_PATH": tempfile.mkdtemp(prefix="bench-sessions-"), "DATABASE_URL": args.database_url,
                      "SECRET_KEY": "bench", "PORTCULLIS_ENCRYPTION_KEY": key_file.read_text(),
                      "PORTCULLIS_SWEEP": False})
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            parser.error("this benchmark is for PostgreSQL")
    rng = random.Random(7)
    t = time.perf_counter()
    if args.keep:
        print("reusing the rows already in the database")
    else:
        build(app, rng)
        print(f"built in {time.perf_counter() - t:.1f} s")
    with app.app_context():
        n_creds = db.session.scalar(select(func.count()).select_from(Credential))
        n_flows = db.session.scalar(select(func.count()).select_from(Flow))
        db.session.remove()
    print(f"{n_creds} credentials, {n_flows} flows; {args.requests} requests per case, Flask test client in-process")
    client = app.test_client()
    admin, member = token_for(app, 1), token_for(app, 2)
    cases = [
        ("filtered, searched, paginated", admin,
         "/api/v1/sessions?q=user-12&status=active,needs_update&auth_mode=user&limit=50&offset=50", True),
        ("first page, unfiltered", admin, "/api/v1/sessions", True),
        ("a member's first page", member, "/api/v1/sessions", False),
    ]
    met = True
    print(f"{'case':32} {'median ms':>10} {'p90 ms':>8} {'rows':>5} {'total':>7}")
    for name, token, path, checked in cases:
        median, p90, body = measure(client, path, token, args.requests)
        print(f"{name:32} {median:10.2f} {p90:8.2f} {body['count']:5d} {body['total_count']:7d}   {path}")
        if checked:
            met &= median < TARGET_MS
    print(f"target: median under {TARGET_MS:.0f} ms for the first two: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
