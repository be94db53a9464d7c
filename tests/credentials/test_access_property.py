"""The effective-access rule has two forms (app/access.py): Python over the snapshot for the hot
path, SQL over the tables for reconciliation. Random worlds (users, servers, keys with owners,
grants, expiries, issued keys with issuer chains that may be broken, loop or be too long) show
that both forms, and reconciliation itself, agree on every binding."""
from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app import access, snapshot
from app.extensions import db
from app.models import Credential, McpServer, User, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow

EXPIRIES = (None, -3600, 3600)  # seconds from now: never, an hour ago, in an hour

world = st.fixed_dictionaries({
    "users": st.lists(st.booleans(), min_size=1, max_size=3),  # active flags
    "servers": st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=3),  # enabled, allow-all
    "keys": st.lists(st.fixed_dictionaries({
        "owner": st.none() | st.integers(0, 2),
        "active": st.booleans(),
        "expires": st.sampled_from(EXPIRIES),
        "issued": st.booleans(),  # source mcp
        "issuer": st.none() | st.integers(0, 9),  # index of another key (or self, or none that exists)
        "grants": st.lists(st.integers(0, 2), max_size=3, unique=True),
    }), min_size=1, max_size=6),
})


def build(spec) -> tuple[list[int], list[int], list[int]]:
    now = utcnow()
    users = [User(email=f"u{i}@example.com", password_hash="x", active=a) for i, a in enumerate(spec["users"])]
    servers = [McpServer(name=f"s{i}", url="http://127.0.0.1:9/mcp", enabled=e, allow_on_all_virtual_keys=aa)
               for i, (e, aa) in enumerate(spec["servers"])]
    db.session.add_all(users + servers)
    db.session.flush()
    keys = []
    for i, k in enumerate(spec["keys"]):
        owner = users[k["owner"]].id if k["owner"] is not None and k["owner"] < len(users) else None
        key, _ = VirtualKey.generate(name=f"k{i}", owner_id=owner, active=k["active"],
                                     source="mcp" if k["issued"] else "api",
                                     expires_at=None if k["expires"] is None else now + timedelta(seconds=k["expires"]))
        key.server_grants = [VirtualKeyServerGrant(mcp_server_id=servers[g].id) for g in k["grants"] if g < len(servers)]
        keys.append(key)
    db.session.add_all(keys)
    db.session.flush()
    for key, k in zip(keys, spec["keys"]):
        if k["issuer"] is not None:
            key.agent_id = f"vk:{keys[k['issuer']].id if k['issuer'] < len(keys) else 999_999}"
    db.session.commit()
    return [u.id for u in users], [s.id for s in servers], [k.id for k in keys]


def clean() -> None:
    db.session.remove()
    with db.engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            if table.name != "signing_keys":
                conn.execute(table.delete())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=world)
def test_python_and_sql_forms_agree_on_every_binding(app, spec):
    with app.app_context():
        clean()
        try:
            user_ids, server_ids, key_ids = build(spec)
            now = utcnow()
            snap = snapshot._load()
            python = {}
            for kid in key_ids:
                view = snap.key_by_id(kid)
                for sid in server_ids:
                    python[("vk", kid, sid)] = view is not None and view.usable(now) and sid in snap.allowlist(view)
            for uid in user_ids:
                allowed = snap.user_allowlist(uid, now)
                for sid in server_ids:
                    python[("user", uid, sid)] = sid in allowed

            # every binding as a credential row: the SQL form is evaluated over these rows
            for mode, ident, sid in python:
                column = "virtual_key_id" if mode == "vk" else "user_id"
                db.session.add(Credential(auth_mode=mode, mcp_server_id=sid, values={}, header_keys=[],
                                          **{column: ident}))
            db.session.commit()  # ... and reconciliation has run on them (new credentials are triggers)

            c = Credential.__table__
            dead = access.dead_issued_keys(db.session, now)
            sql = {}
            for mode in ("user", "vk"):
                allowed_ids = set(db.session.scalars(select(c.c.id).where(
                    c.c.auth_mode == mode, access.sql_allowed(c, mode, now, dead))))
                for row in db.session.execute(select(c.c.id, c.c.user_id, c.c.virtual_key_id, c.c.mcp_server_id)
                                              .where(c.c.auth_mode == mode)):
                    sql[(mode, row.user_id if mode == "user" else row.virtual_key_id, row.mcp_server_id)] = \
                        row.id in allowed_ids
            assert sql == python
            status = {(r.auth_mode, r.user_id if r.auth_mode == "user" else r.virtual_key_id, r.mcp_server_id):
                      r.status == "active" for r in db.session.scalars(select(Credential))}
            assert status == python  # reconciliation followed the same rule
        finally:
            clean()
