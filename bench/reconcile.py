"""What reconciliation costs on PostgreSQL, at two table sizes side by side.

For each size N (default 1 000 and 10 000) it builds, in a fresh schema made by the real
migrations: a server ``shared`` with ``allow_on_all_virtual_keys``; N owner-less keys, each
holding a ``vk`` credential for it; N users, each owning one key and holding a ``user``
credential for it; a server ``small`` reached by 100 of those keys through an explicit grant
(100 credentials); one more key with an explicit grant to a server ``single`` and a credential
there. Then it times whole edits (the ops call + commit, which is where reconciliation runs;
median of --runs):

- toggling ``shared``'s allow-all off and on (2N credentials change each way),
- toggling ``small``'s enabled flag off and on (100 change, whatever N is),
- removing and re-adding the one grant of the ``single`` key (1 changes),

printing rows changed and milliseconds per edit. Cost should follow the rows changed, not N.

usage: .venv/bin/python bench/reconcile.py [--sizes 1000,10000] [--runs 5]
       [--database postgresql://postgres@127.0.0.1:5432/bench_recon]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import Credential, McpServer, User, VirtualKey, VirtualKeyServerGrant  # noqa: E402
from app.models.base import utcnow  # noqa: E402

SMALL = 100


def reset(app) -> None:
    from flask_migrate import upgrade

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        upgrade()


def build(app, n: int) -> dict:
    """Bulk inserts (this is set-up, not what is measured)."""
    now = utcnow()

    def server(name, **kw):
        s = McpServer(name=name, url="http://127.0.0.1:9/mcp", auth_type="per_user_headers",
                      per_user_header_keys=["x-api-key"], tools=[], **kw)
        db.session.add(s)
        db.session.flush()
        return s.id

    def keys(rows):
        start = db.session.scalar(select(func.coalesce(func.max(VirtualKey.id), 0)))
        db.session.execute(insert(VirtualKey), [
            {"name": f"k{start + i}", "key_hash": hashlib.sha256(f"bench-{start + i}".encode()).hexdigest(),
             "key_prefix": "vk_bench", "source": "api", "rate_limit_per_minute": 60, "active": True,
             "created_at": now, "updated_at": now, **row} for i, row in enumerate(rows)])
        return list(db.session.scalars(select(VirtualKey.id).where(VirtualKey.id > start).order_by(VirtualKey.id)))

    def creds(rows):
        db.session.execute(insert(Credential), [
            {"auth_kind": "headers", "status": "active", "values": {"x-api-key": "bench"},
             "header_keys": ["x-api-key"], "created_at": now, "updated_at": now, "status_changed_at": now, **row}
            for row in rows])

    with app.app_context():
        shared = server("shared", allow_on_all_virtual_keys=True)
        small = server("small")
        single = server("single")
        vk_ids = keys([{} for _ in range(n)])
        db.session.execute(insert(User), [
            {"email": f"u{i}@bench.example", "password_hash": "x", "role": "member", "active": True,
             "must_change_password": False, "created_at": now, "updated_at": now} for i in range(n)])
        user_ids = list(db.session.scalars(select(User.id).order_by(User.id)))
        keys([{"owner_id": uid} for uid in user_ids])
        (lone,) = keys([{}])
        db.session.execute(insert(VirtualKeyServerGrant), [{"virtual_key_id": k, "mcp_server_id": small}
                                                          for k in vk_ids[:SMALL]]
                           + [{"virtual_key_id": lone, "mcp_server_id": single}])
        creds([{"auth_mode": "vk", "virtual_key_id": k, "mcp_server_id": shared} for k in vk_ids]
              + [{"auth_mode": "user", "user_id": u, "mcp_server_id": shared} for u in user_ids]
              + [{"auth_mode": "vk", "virtual_key_id": k, "mcp_server_id": small} for k in vk_ids[:SMALL]]
              + [{"auth_mode": "vk", "virtual_key_id": lone, "mcp_server_id": single}])
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        total = db.session.scalar(select(func.count()).select_from(Credential))
    return {"shared": shared, "small": small, "single": single, "lone": lone, "credentials": total}


def timed(app, edit) -> tuple[float, int]:
    """One edit and its commit: (milliseconds, credential rows whose status changed)."""
    from app.credentials import reconcile

    changed = []
    original = reconcile.run

    def counting(scope, session=None):
        result = original(scope, session)
        changed.append(result.orphaned + result.reactivated)
        return result

    reconcile.run = counting
    try:
        with app.app_context():
            t0 = time.perf_counter()
            edit()
            db.session.commit()
            ms = (time.perf_counter() - t0) * 1000
            db.session.remove()
    finally:
        reconcile.run = original
    return ms, sum(changed)


def measure(app, ids: dict, runs: int) -> dict:
    from app.ops.keys import get_key, update_key
    from app.ops.servers import get_server, update_server

    def allow_all(on):
        return lambda: update_server(get_server(ids["shared"]), {"allow_on_all_virtual_keys": on})

    def enabled(on):
        def edit():
            get_server(ids["small"]).enabled = on  # (re-enabling through the API would contact the upstream)
        return edit

    def grant(on):
        servers = [{"server_id": ids["single"], "tools": None}] if on else []
        return lambda: update_key(get_key(ids["lone"]), {"mcp_servers": servers})

    out = {}
    for label, off, on in (("allow-all toggle", allow_all(False), allow_all(True)),
                           (f"enabled toggle ({SMALL} credentials)", enabled(False), enabled(True)),
                           ("one grant removed / re-added", grant(False), grant(True))):
        offs, ons = [], []
        for _ in range(runs):
            offs.append(timed(app, off))
            ons.append(timed(app, on))
        out[label] = {"off": (statistics.median(t for t, _ in offs), offs[-1][1]),
                      "on": (statistics.median(t for t, _ in ons), ons[-1][1])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/bench_recon")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    app = create_app({"INSTANCE_PATH": tempfile.mkdtemp(prefix="bench-reconcile-"), "DATABASE_URL": args.database,
                      "SECRET_KEY": "bench", "PORTCULLIS_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                      "PORTCULLIS_SWEEP": False})
    import logging

    logging.getLogger("app.credentials.reconcile").setLevel(logging.WARNING)
    results = {}
    for n in sizes:
        reset(app)
        t0 = time.perf_counter()
        ids = build(app, n)
        print(f"N={n}: {ids['credentials']} credentials, {2 * n + 1} keys, {n} users "
              f"(built in {time.perf_counter() - t0:.1f} s)", flush=True)
        results[n] = measure(app, ids, args.runs)

    print(f"\nmedian of {args.runs} edits each (edit + commit, reconciliation included), PostgreSQL")
    header = "| edit | " + " | ".join(f"N={n}: rows | N={n}: ms" for n in sizes) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(sizes)))
    for label in results[sizes[0]]:
        for way in ("off", "on"):
            cells = []
            for n in sizes:
                ms, rows = results[n][label][way]
                cells += [str(rows), f"{ms:.1f}"]
            print(f"| {label}: {way} | " + " | ".join(cells) + " |")
    big = max(sizes)
    worst = max(results[big]["allow-all toggle"][w][0] for w in ("off", "on"))
    print(f"\ntarget: the N={big} allow-all toggle under 1000 ms: {worst:.0f} ms -> "
          f"{'met' if worst < 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
