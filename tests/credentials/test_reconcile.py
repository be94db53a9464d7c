"""Reconciliation: credentials and pending flows follow the grants, whatever edit changed them
(JSON API, pages, ORM import, bulk statements), in the edit's own transaction."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from app.credentials import reconcile
from app.extensions import db
from app.models import AuditEvent, Credential, Flow, McpServer, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow
from tests.conftest import make_user
from tests.support.api import admin_api  # noqa: F401
from tests.support.api import assert_error
from tests.support.web import Web

COL = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}


def server(app, name, **fields) -> int:
    """A per_user_headers server (never contacted by these edits)."""
    with app.app_context():
        s = McpServer(name=name, url="http://127.0.0.1:9/mcp", auth_type="per_user_headers",
                      per_user_header_keys=["x-api-key"], tools=[], **fields)
        db.session.add(s)
        db.session.commit()
        return s.id


def key(app, servers=(), owner=None, source="api", **fields) -> int:
    with app.app_context():
        k, _ = VirtualKey.generate(name=f"k{utcnow().timestamp()}", owner_id=owner, source=source, **fields)
        k.server_grants = [VirtualKeyServerGrant(mcp_server_id=s) for s in servers]
        db.session.add(k)
        db.session.commit()
        return k.id


def cred(app, mode, ident, sid, status="active") -> int:
    with app.app_context():
        c = Credential(auth_mode=mode, mcp_server_id=sid, status=status, values={"x-api-key": "v"},
                       header_keys=["x-api-key"], **{COL[mode]: ident})
        db.session.add(c)
        db.session.commit()
        return c.id


def flow(app, mode, ident, sid, fid) -> str:
    with app.app_context():
        db.session.add(Flow(id=fid, auth_mode=mode, mcp_server_id=sid, status="pending",
                            expires_at=utcnow() + timedelta(minutes=15), **{COL[mode]: ident}))
        db.session.commit()
        return fid


def status(app, cid):
    with app.app_context():
        c = db.session.get(Credential, cid)
        return None if c is None else c.status


def flows(app):
    with app.app_context():
        return sorted(f.id for f in db.session.scalars(select(Flow).where(Flow.status == "pending")))


def reconcile_events(app):
    with app.app_context():
        return [e.detail for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "credentials.reconcile").order_by(AuditEvent.id))]


def enable(app, sid):
    with app.app_context():
        db.session.get(McpServer, sid).enabled = True
        db.session.commit()


def grants(*sids):
    return {"mcp_servers": [{"server_id": s, "tools": None} for s in sids]}


def converged(app) -> bool:
    """A fresh reconciliation of every binding would change nothing."""
    with app.app_context():
        result = reconcile.run_all()
        db.session.rollback()
        return result.changed == 0


# -- the rules, through the JSON API ----------------------------------------------------------------

def test_grant_removal_orphans_deletes_pending_flows_and_regrant_reactivates(app, admin_api):
    s1, s2 = server(app, "one"), server(app, "two")
    k = key(app, [s1, s2])
    c1, c2 = cred(app, "vk", k, s1), cred(app, "vk", k, s2)
    upd = cred(app, "vk", key(app, [s1]), s1, status="needs_update")
    flow(app, "vk", k, s1, "f-one")
    flow(app, "vk", k, s2, "f-two")
    before = len(reconcile_events(app))

    assert admin_api.patch(f"/virtual-keys/{k}", json=grants(s2)).status_code == 200
    assert (status(app, c1), status(app, c2), status(app, upd)) == ("orphaned", "active", "needs_update")
    assert flows(app) == ["f-two"]  # only the pending flow that can no longer complete
    events = reconcile_events(app)
    assert len(events) == before + 1
    assert events[-1].startswith("orphaned=1 reactivated=0 pending_flows_deleted=1")

    assert admin_api.patch(f"/virtual-keys/{k}", json=grants(s1, s2)).status_code == 200
    assert (status(app, c1), status(app, c2)) == ("active", "active")  # nothing re-submitted
    assert reconcile_events(app)[-1].startswith("orphaned=0 reactivated=1 pending_flows_deleted=0")
    # an edit that changes no allowlist writes no reconciliation event
    assert admin_api.patch(f"/virtual-keys/{k}", json={"name": "renamed"}).status_code == 200
    assert len(reconcile_events(app)) == before + 2
    assert converged(app)


def test_user_bindings_follow_the_union_of_the_owners_keys(app, admin_api):
    uid = make_user(app, "alice@example.com")
    s1 = server(app, "one")
    k1, k2 = key(app, [s1], owner=uid), key(app, [s1], owner=uid)
    c = cred(app, "user", uid, s1)
    flow(app, "user", uid, server(app, "other"), "f-other")  # no key reaches it: stays until an edit
    assert admin_api.patch(f"/virtual-keys/{k1}", json=grants()).status_code == 200
    assert status(app, c) == "active"  # k2 still grants it
    assert flows(app) == []  # the owner's bindings were reconciled, the stray flow too
    assert admin_api.patch(f"/virtual-keys/{k2}", json=grants()).status_code == 200
    assert status(app, c) == "orphaned"
    r = admin_api.post("/virtual-keys", json={"name": "new", "owner_id": uid, **grants(s1)})
    assert r.status_code == 201
    assert status(app, c) == "active"  # a new key of the owner brings it back
    assert converged(app)


def test_allow_all_toggle_and_minted_keys(app, admin_api):
    uid = make_user(app, "alice@example.com")
    s = server(app, "shared", allow_on_all_virtual_keys=True)
    k = key(app)  # no explicit grant: reaches s through allow-all
    vk_cred = cred(app, "vk", k, s)
    key(app, owner=uid)
    user_cred = cred(app, "user", uid, s)
    bob = make_user(app, "bob@example.com")
    key(app, owner=bob, source="mcp")  # a minted key: explicit grants only, no allow-all
    bob_cred = cred(app, "user", bob, s)
    assert (status(app, vk_cred), status(app, user_cred), status(app, bob_cred)) == ("active", "active", "orphaned")

    assert admin_api.patch(f"/mcp-servers/{s}", json={"allow_on_all_virtual_keys": False}).status_code == 200
    assert (status(app, vk_cred), status(app, user_cred)) == ("orphaned", "orphaned")
    assert admin_api.patch(f"/mcp-servers/{s}", json={"allow_on_all_virtual_keys": True}).status_code == 200
    assert (status(app, vk_cred), status(app, user_cred), status(app, bob_cred)) == ("active", "active", "orphaned")
    assert converged(app)


def test_an_issued_key_granted_a_server_follows_its_issuer(app, admin_api):
    """An admin may grant an MCP server to a key issued by request_key: reconciliation then
    follows the hot path's rule, under which the issued key lives only as long as its issuer."""
    s = server(app, "one")
    issuer = key(app)
    issued = key(app, [s], source="mcp", agent_id=f"vk:{issuer}")
    c = cred(app, "vk", issued, s)
    assert status(app, c) == "active"
    assert admin_api.patch(f"/virtual-keys/{issuer}", json={"active": False}).status_code == 200
    assert status(app, c) == "orphaned"  # an edit of the issuer reached the key it issued
    assert admin_api.patch(f"/virtual-keys/{issuer}", json={"active": True}).status_code == 200
    assert status(app, c) == "active"
    assert admin_api.delete(f"/virtual-keys/{issuer}").status_code == 204
    assert status(app, c) == "orphaned"
    assert converged(app)


def test_disabling_and_deleting_a_server(app, admin_api):
    s = server(app, "one")
    k = key(app, [s])
    c = cred(app, "vk", k, s)
    flow(app, "vk", k, s, "f")
    assert admin_api.patch(f"/mcp-servers/{s}", json={"enabled": False}).status_code == 200
    assert status(app, c) == "orphaned" and flows(app) == []
    enable(app, s)  # (the API re-verifies a per_user_headers server with sample values)
    assert status(app, c) == "active"
    assert admin_api.delete(f"/mcp-servers/{s}").status_code == 204
    assert status(app, c) is None


def test_key_active_expiry_owner_and_deletion(app, admin_api):
    alice, bob = make_user(app, "alice@example.com"), make_user(app, "bob@example.com")
    s = server(app, "one")
    k = key(app, [s], owner=alice)
    a, b = cred(app, "user", alice, s), cred(app, "user", bob, s)
    assert (status(app, a), status(app, b)) == ("active", "orphaned")
    path = f"/virtual-keys/{k}"

    assert admin_api.patch(path, json={"active": False}).status_code == 200
    assert status(app, a) == "orphaned"
    assert admin_api.patch(path, json={"active": True}).status_code == 200
    assert status(app, a) == "active"

    with app.app_context():  # the API refuses a past expiry; an import may set one
        db.session.get(VirtualKey, k).expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
    assert status(app, a) == "orphaned"
    future = (utcnow() + timedelta(days=1)).replace(microsecond=0).isoformat() + "Z"
    assert admin_api.patch(path, json={"expires_at": future}).status_code == 200
    assert status(app, a) == "active"

    assert admin_api.patch(path, json={"owner_id": bob}).status_code == 200  # the key changes hands
    assert (status(app, a), status(app, b)) == ("orphaned", "active")

    assert admin_api.delete(path).status_code == 204
    assert status(app, b) == "orphaned"
    assert converged(app)


def test_deactivating_and_deleting_a_user(app, admin_api):
    uid = make_user(app, "alice@example.com")
    s = server(app, "one")
    key(app, [s], owner=uid)
    c = cred(app, "user", uid, s)
    assert admin_api.patch(f"/users/{uid}", json={"active": False}).status_code == 200
    assert status(app, c) == "orphaned"
    assert admin_api.patch(f"/users/{uid}", json={"active": True}).status_code == 200
    assert status(app, c) == "active"
    assert admin_api.delete(f"/users/{uid}").status_code == 204
    assert status(app, c) is None


def test_session_bindings_and_other_statuses_are_left_alone(app, admin_api):
    from app.models import McpSession

    s = server(app, "one")
    with app.app_context():
        db.session.add(McpSession(id="s" * 64, principal="anonymous", protocol_version="2025-11-25"))
        db.session.commit()
    sess = cred(app, "session", "s" * 64, s)
    flow(app, "session", "s" * 64, s, "f-session")
    k = key(app, [s])
    upd = cred(app, "vk", k, s, status="needs_update")
    assert admin_api.patch(f"/virtual-keys/{k}", json=grants()).status_code == 200
    assert admin_api.patch(f"/mcp-servers/{s}", json={"enabled": False}).status_code == 200
    assert (status(app, sess), status(app, upd)) == ("active", "needs_update")
    assert flows(app) == ["f-session"]


def test_a_failed_edit_changes_nothing(app, admin_api):
    s = server(app, "one")
    k = key(app, [s])
    c = cred(app, "vk", k, s)
    flow(app, "vk", k, s, "f")
    # invalid: one grant names a server that does not exist -> 4xx, the other removal not applied
    r = admin_api.patch(f"/virtual-keys/{k}", json={"mcp_servers": [{"server_id": 999999, "tools": None}]})
    assert_error(r, 422, "validation_failed", {"mcp_servers"})
    assert status(app, c) == "active" and flows(app) == ["f"]
    # an ORM edit that fails at commit rolls its reconciliation back with it
    with app.app_context():
        db.session.get(McpServer, s).enabled = False
        db.session.add(McpServer(name="one", url="http://127.0.0.1:9/mcp", tools=[]))  # duplicate name
        with pytest.raises(IntegrityError):  # the duplicate name, refused by the database
            db.session.commit()
        db.session.rollback()
    assert status(app, c) == "active" and flows(app) == ["f"]


# -- every path: pages, ORM imports, bulk statements, submissions, the sweeper ------------------------

def test_pages_reconcile(app, client, admin_id):
    web = Web(client).login("admin@example.com")
    uid = make_user(app, "alice@example.com")
    s = server(app, "one")
    k = key(app, [s], owner=uid)
    c = cred(app, "user", uid, s)
    assert web.post(f"/keys/{k}/grants", {}).status_code == 303  # no server ticked
    assert status(app, c) == "orphaned"
    assert web.post(f"/keys/{k}/grants", {"server": str(s)}).status_code == 303
    assert status(app, c) == "active"
    assert web.post(f"/keys/{k}/revoke").status_code == 303
    assert status(app, c) == "orphaned"
    k2 = key(app, [s], owner=uid)
    assert status(app, c) == "active"
    form = {"name": "one", "url": "http://127.0.0.1:9/mcp", "auth_type": "per_user_headers",
            "per_user_header_keys": "x-api-key", "connect_timeout": "5", "read_timeout": "30"}  # enabled unticked
    r = web.post(f"/servers/{s}", form)
    assert r.status_code == 303, r.get_data(as_text=True)[:500]
    assert status(app, c) == "orphaned"
    enable(app, s)
    assert status(app, c) == "active"
    assert web.post(f"/keys/{k2}/delete").status_code == 303
    assert status(app, c) == "orphaned"


def test_the_cli_reconciles(app, monkeypatch):
    """`flask ensure-admin` re-activating the (only, deactivated) admin brings back what they stored."""
    uid = make_user(app, "root@example.com", role="admin", active=False)
    s = server(app, "one")
    key(app, [s], owner=uid)
    c = cred(app, "user", uid, s)
    assert status(app, c) == "orphaned"
    monkeypatch.setenv("PORTCULLIS_ADMIN_EMAIL", "root@example.com")
    result = app.test_cli_runner().invoke(args=["ensure-admin"])
    assert result.exit_code == 0, result.output
    assert status(app, c) == "active"


def test_orm_import_and_bulk_statements_reconcile(app):
    s = server(app, "one")
    k = key(app)
    c = cred(app, "vk", k, s)
    assert status(app, c) == "orphaned"  # stored without access: orphaned at once
    with app.app_context():  # an import script working on the models directly
        db.session.add(VirtualKeyServerGrant(virtual_key_id=k, mcp_server_id=s))
        db.session.commit()
    assert status(app, c) == "active"
    with app.app_context():  # a bulk UPDATE of an access column
        db.session.execute(update(McpServer).where(McpServer.id == s).values(enabled=False))
        db.session.commit()
    assert status(app, c) == "orphaned"
    with app.app_context():  # a bulk UPDATE of other columns is not a trigger
        db.session.execute(update(McpServer).values(enabled=True, name="renamed"))
        db.session.execute(update(VirtualKey).values(last_used_at=utcnow()))
        db.session.commit()
    assert status(app, c) == "active"


def test_sweeper_reconciles_keys_that_expired_by_the_clock(app):
    from app.sweep import sweep

    s = server(app, "one")
    k = key(app, [s])
    c = cred(app, "vk", k, s)
    with app.app_context():  # time passes: no edit, no trigger
        db.session.execute(text("UPDATE virtual_keys SET expires_at = :t WHERE id = :k"),
                           {"t": utcnow() - timedelta(seconds=1), "k": k})
        db.session.commit()
    assert status(app, c) == "active"
    with app.app_context():
        assert sweep(app).reconciled == 1
    assert status(app, c) == "orphaned"


# -- concurrency (PostgreSQL) ------------------------------------------------------------------------

def test_concurrent_edits_neither_deadlock_nor_leave_stale_states(app):
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("row locks and deadlocks are PostgreSQL's")
    import random
    import threading

    from sqlalchemy.exc import DBAPIError, SAWarning

    from app.ops.keys import get_key, update_key
    from app.ops.servers import get_server, update_server

    users = [make_user(app, f"u{i}@example.com") for i in range(3)]
    servers = [server(app, f"s{i}", allow_on_all_virtual_keys=i == 0) for i in range(4)]
    keys = [key(app, servers[:2], owner=users[i % 3] if i % 2 else None) for i in range(6)]
    for sid in servers:
        for uid in users:
            cred(app, "user", uid, sid)
        for kid in keys[::2]:
            cred(app, "vk", kid, sid)
    errors, deadlocks, done, conflicts = [], [], [], []

    def worker(seed):
        rnd = random.Random(seed)
        for _ in range(60):
            with app.app_context():
                try:
                    if rnd.random() < 0.6:
                        k = get_key(rnd.choice(keys))
                        update_key(k, {**grants(*rnd.sample(servers, rnd.randint(0, 3))),
                                       **({"active": rnd.random() < 0.8} if rnd.random() < 0.3 else {})})
                    elif rnd.random() < 0.5:
                        update_server(get_server(rnd.choice(servers)), {"allow_on_all_virtual_keys": rnd.random() < 0.5})
                    else:  # (re-enabling through the API needs sample values: an import does it directly)
                        get_server(rnd.choice(servers)).enabled = rnd.random() < 0.7
                    db.session.commit()
                    done.append(1)
                except (IntegrityError, SAWarning):
                    # two edits replaced the same key's grants at once: the later one found a row
                    # already added or gone (an error under this suite's warning filter); it rolls back
                    db.session.rollback()
                    conflicts.append(1)
                except DBAPIError as e:
                    db.session.rollback()
                    (deadlocks if "deadlock" in str(e).lower() else errors).append(repr(e)[:300])
                except Exception as e:  # noqa: BLE001 - reported by the assertion below
                    db.session.rollback()
                    errors.append(repr(e)[:300])
                finally:
                    db.session.remove()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert deadlocks == [] and errors == []
    assert len(done) + len(conflicts) == 240 and len(done) >= 180
    assert converged(app)  # the final state is what a fresh reconciliation of every binding computes


def test_overlapping_edits_see_each_other(app):
    """Edit A removes a key's grant while edit B turns the server's allow-all off. Either alone
    leaves the credential reachable; together they do not. Without the reconcile lock both could
    reconcile before either commits and leave the credential active for good."""
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("concurrent transactions: PostgreSQL")
    import threading

    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from app.ops.keys import get_key, update_key
    from app.ops.servers import get_server, update_server

    s = server(app, "shared", allow_on_all_virtual_keys=True)
    k = key(app, [s])
    c = cred(app, "vk", k, s)
    a_reconciled, b_reconciled = threading.Event(), threading.Event()

    def pause(session):  # registered after reconcile's own hook: runs once A has reconciled
        name = threading.current_thread().name
        if name == "edit-a":
            a_reconciled.set()
            b_reconciled.wait(2)  # B cannot get here while A holds the lock
        elif name == "edit-b":
            b_reconciled.set()

    def edit_a():
        with app.app_context():
            update_key(get_key(k), grants())
            db.session.commit()

    def edit_b():
        a_reconciled.wait(10)
        with app.app_context():
            update_server(get_server(s), {"allow_on_all_virtual_keys": False})
            db.session.commit()

    event.listen(Session, "before_commit", pause)
    try:
        threads = [threading.Thread(target=edit_a, name="edit-a"), threading.Thread(target=edit_b, name="edit-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        event.remove(Session, "before_commit", pause)
    assert not any(t.is_alive() for t in threads) and a_reconciled.is_set() and b_reconciled.is_set()
    assert status(app, c) == "orphaned"
    assert converged(app)


# -- runtime -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_url():
    from tests.support.mcp import start_upstream, stop

    proc, url = start_upstream("--name", "keyed", "--require-header", "X-Api-Key=sample-77",
                               "--require-header", "X-Api-Key=alice-canary-31")
    yield url
    stop(proc)


def test_orphaned_binding_is_an_unknown_tool_and_regrant_restores_it(app, admin_api, keyed_url):
    from app.ops.servers import create_server
    from tests.support.mcp import Rpc, add_key

    with app.app_context():
        sid = create_server({"name": "keyed", "url": keyed_url, "auth_type": "per_user_headers",
                             "per_user_header_keys": ["X-Api-Key"], "sample_headers": {"x-api-key": "sample-77"}}).id
        db.session.commit()
    uid = make_user(app, "alice@example.com")
    kid, secret = add_key(app, {sid: None}, owner_id=uid)
    c = cred(app, "user", uid, sid)
    with app.app_context():
        db.session.get(Credential, c).values = {"x-api-key": "alice-canary-31"}
        db.session.commit()
    rpc = Rpc(app.test_client(), secret)
    rpc.initialize()

    def call():
        return rpc.call("tools/call", {"name": "keyed__headers", "arguments": {}}).json

    assert "alice-canary-31" in call()["result"]["content"][0]["text"]
    assert admin_api.patch(f"/virtual-keys/{kid}", json=grants()).status_code == 200
    assert status(app, c) == "orphaned"
    answer = call()
    assert answer["error"]["code"] == -32602 and "Unknown tool" in answer["error"]["message"]
    assert not [t for t in rpc.call("tools/list").json["result"]["tools"] if t["name"].startswith("keyed__")]
    assert flows(app) == []  # no flow is started for a server outside the allowlist
    assert admin_api.patch(f"/virtual-keys/{kid}", json=grants(sid)).status_code == 200
    result = call()["result"]  # the stored value works again: nothing re-submitted
    assert not result.get("isError") and "alice-canary-31" in result["content"][0]["text"]


def test_a_stale_link_stores_an_orphaned_credential_and_says_so(app, keyed_url):
    """A flow started before access was withdrawn (another instance's snapshot was older): the
    submission is verified and stored, orphaned at once, and the page says it is not in use."""
    from app.ops.servers import create_server
    from tests.support.web import csrf_in

    with app.app_context():
        sid = create_server({"name": "keyed", "url": keyed_url, "auth_type": "per_user_headers",
                             "per_user_header_keys": ["X-Api-Key"], "sample_headers": {"x-api-key": "sample-77"}}).id
        db.session.commit()
    uid = make_user(app, "alice@example.com")
    flow(app, "user", uid, sid, "stale-flow")  # no key of alice reaches the server
    web = Web(app.test_client()).login("alice@example.com")
    page = web.get("/connect/stale-flow").get_data(as_text=True)
    r = web.post("/connect/stale-flow", {"header:x-api-key": "alice-canary-31", "csrf_token": csrf_in(page)})
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "not in use" in body and "alice-canary-31" not in body
    with app.app_context():
        assert db.session.scalar(select(Credential.status)) == "orphaned"


def test_a_mass_edit_reconciles_everything_in_one_pass(app, monkeypatch):
    monkeypatch.setattr(reconcile, "MAX_SCOPE_IDS", 1)  # (5 000 touched ids in real life)
    s1, s2 = server(app, "one"), server(app, "two")
    k1, k2 = key(app, [s1]), key(app, [s2])
    c1, c2 = cred(app, "vk", k1, s1), cred(app, "vk", k2, s2)
    with app.app_context():
        for sid in (s1, s2):
            db.session.get(McpServer, sid).enabled = False
        db.session.commit()
    assert (status(app, c1), status(app, c2)) == ("orphaned", "orphaned")
    assert "every binding" in reconcile_events(app)[-1]
