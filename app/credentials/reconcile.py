"""Credentials follow the grants: reconciliation, run by the session itself before each commit.

A binding may hold a credential and a pending flow only for servers in its effective allowlist:

- a key's: explicit server grants ∪ servers with ``allow_on_all_virtual_keys`` (not for keys
  minted by ``portcullis__request_key``, which get their explicit grants only), minus disabled
  servers; a revoked or expired key, or one whose owner is deactivated, has none;
- a user's (``user`` bindings): the union over the keys they own.

Whenever a flush changes something that allowlist is made of (a key's grants, owner, active
flag, expiry; a server's allow-all or enabled flag; a deletion; a user's active flag; a newly
stored credential), the session records what it touched; just before that transaction commits
one set-based pass over the touched bindings, in the same transaction:

- deletes their ``pending`` flows for servers outside the allowlist,
- turns their ``active`` credentials outside it ``orphaned`` and ``orphaned`` ones inside it
  ``active`` again (nothing is re-submitted),
- leaves ``needs_update`` (and later ``needs_reauth``) rows and ``session`` bindings alone,

and writes one audit event with the counts when it changed anything. A real change of a
server's per-user header keys (not case, spacing or order) is a trigger too: every ``active``
credential of that server turns ``needs_update`` (each person resubmits, only the new keys). Handlers never call it:
pages, the JSON API, the CLI and any ORM-level import all go through the same session events.
A rolled-back edit rolls back its reconciliation with it.

Lock order on PostgreSQL, the same for every writer: the reconcile lock (one transaction-scoped
advisory lock, taken before the edit's own first write) -> flow rows in id order -> credential
rows in id order. Reconciling transactions therefore run one after the other and each sees the
others' committed edits, so concurrent edits neither deadlock nor leave stale states.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import ARRAY, and_, any_, bindparam, delete, event, false, inspect, or_, select, text, true, update
from sqlalchemy.orm import Session

from .. import access
from .. import metrics
from ..audit import record
from ..extensions import db
from ..models import Credential, Flow, McpServer, User, VirtualKey, VirtualKeyServerGrant
from ..models.base import utcnow
from . import store

log = logging.getLogger(__name__)

LOCK_KEY = 0x72636E6C  # "rcnl": the advisory lock every reconciling transaction takes first
SCOPE = "portcullis_reconcile_scope"
LOCKED = "portcullis_reconcile_locked"
CHANGED = "portcullis_reconcile_changed"
TOUCHED = "portcullis_reconcile_touched"  # from before_flush to after_flush

# Columns whose change alters an allowlist (bulk UPDATEs that set only other columns, such as
# the proxy's last_used_at or a key rotation, are not reconciliation triggers).
KEY_ATTRS = ("owner_id", "active", "expires_at", "source")
SERVER_ATTRS = ("allow_on_all_virtual_keys", "enabled")
USER_ATTRS = ("active",)
ACCESS_COLUMNS = {
    "virtual_keys": set(KEY_ATTRS),
    "virtual_key_server_grants": {"virtual_key_id", "mcp_server_id"},
    "mcp_servers": set(SERVER_ATTRS),
    "users": set(USER_ATTRS),
}
RECONCILED_MODES = ("user", "vk")  # session bindings (development mode) have no grants
MAX_SCOPE_IDS = 5000


@dataclass
class Scope:
    """The bindings an edit may have changed: vk bindings of ``keys``, user bindings of
    ``users`` and of the owners of ``keys``, every binding on ``servers``; or ``everything``."""

    keys: set[int] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    servers: set[int] = field(default_factory=set)
    everything: bool = False
    rekeyed: set[int] = field(default_factory=set)  # servers whose per-user header keys changed

    def __bool__(self):
        return self.everything or bool(self.keys or self.users or self.servers or self.rekeyed)

    def describe(self) -> str:
        if self.everything:
            return "every binding"
        parts = [f"{name} {','.join(map(str, sorted(ids)[:20]))}{'...' if len(ids) > 20 else ''}"
                 for name, ids in (("keys", self.keys), ("users", self.users), ("servers", self.servers)) if ids]
        return "; ".join(parts)


@dataclass
class Result:
    orphaned: int = 0
    reactivated: int = 0
    flows_deleted: int = 0
    needs_update: int = 0

    @property
    def changed(self) -> int:
        return self.orphaned + self.reactivated + self.flows_deleted + self.needs_update


# -- what an edit touched ------------------------------------------------------------------------

def _changed(obj, attrs) -> bool:
    state = inspect(obj)
    return any(state.attrs[a].history.has_changes() for a in attrs)


def _old_and_new(obj, attr) -> set:
    hist = inspect(obj).attrs[attr].history
    return {v for v in (*hist.added, *hist.deleted, *hist.unchanged) if v is not None}


def _rekeyed(obj: McpServer) -> bool:
    """Did the server's per-user header key set really change (not case, spacing or order)?"""
    hist = inspect(obj).attrs["per_user_header_keys"].history
    if not hist.added:
        return False
    old = (hist.deleted or hist.unchanged or [None])[0] or []
    canon = lambda keys: {k.strip().lower() for k in keys or []}  # noqa: E731
    return canon(old) != canon(hist.added[0])


def _touches(obj, how: str) -> bool:
    """Does adding (``new``), changing (``dirty``) or deleting (``deleted``) this object change
    some binding's allowlist?"""
    if isinstance(obj, VirtualKey):
        if how == "new":
            return obj.source != "mcp"  # a minted key reaches no allow-all server, only its grants
        return how == "deleted" or _changed(obj, KEY_ATTRS)
    if isinstance(obj, VirtualKeyServerGrant):
        # a grant removed from key.server_grants is still "dirty" here: the delete-orphan
        # cascade deletes it during the flush
        return how != "dirty" or _changed(obj, ("virtual_key_id", "mcp_server_id", "virtual_key"))
    if isinstance(obj, McpServer):
        return how == "deleted" or (how == "dirty" and (_changed(obj, SERVER_ATTRS) or _rekeyed(obj)))
    if isinstance(obj, User):
        return how == "deleted" or (how == "dirty" and _changed(obj, USER_ATTRS))
    if isinstance(obj, Credential):
        # a stored (or re-activated) credential must itself be inside its binding's allowlist
        if obj.auth_mode not in RECONCILED_MODES or how == "deleted":
            return False
        return how == "new" or (obj.status == "active" and _changed(
            obj, ("status", "user_id", "virtual_key_id", "mcp_server_id")))
    return False


def _record(scope: Scope, obj) -> None:
    if isinstance(obj, VirtualKey):
        scope.keys.add(obj.id)
        scope.users |= _old_and_new(obj, "owner_id")
    elif isinstance(obj, VirtualKeyServerGrant):
        scope.keys |= _old_and_new(obj, "virtual_key_id")
        scope.keys |= {k.id for k in _old_and_new(obj, "virtual_key") if k.id is not None}
    elif isinstance(obj, McpServer):
        scope.servers.add(obj.id)
        if _rekeyed(obj):
            scope.rekeyed.add(obj.id)
    elif isinstance(obj, User):
        scope.users.add(obj.id)
    elif isinstance(obj, Credential):
        (scope.users if obj.auth_mode == "user" else scope.keys).add(obj.identity)


def _pending(session) -> list:
    return [(obj, how) for how, objs in (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted))
            for obj in objs]


@event.listens_for(Session, "before_flush")
def _before_flush(session, _ctx, _instances):
    touched = [o for o, how in _pending(session) if _touches(o, how)]
    if touched:
        # The lock comes before the edit's own writes, so every reconciling transaction takes
        # its locks in the same order.
        lock(session)
        session.info[TOUCHED] = touched


@event.listens_for(Session, "after_flush")
def _after_flush(session, _ctx):
    # ids are assigned now, and the attribute history is still that of the flush.
    touched = session.info.pop(TOUCHED, None)
    if touched:
        scope = session.info.setdefault(SCOPE, Scope())
        for obj in touched:
            _record(scope, obj)


@event.listens_for(Session, "do_orm_execute")
def _statement(state):
    """Two kinds of statements bypass the flush hooks. ``SELECT ... FOR UPDATE`` of flows or
    credentials (a writer locking its rows before it changes them): the reconcile lock comes
    first, to keep the one lock order. UPDATE/DELETE statements: one that can change an
    allowlist reconciles every binding (rare: admin edits go through the ORM)."""
    if state.is_select:
        if getattr(state.statement, "_for_update_arg", None) is not None and any(
                m.class_ in (Flow, Credential) for m in state.all_mappers):
            lock(state.session)
        return
    if not (state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    watched = ACCESS_COLUMNS.get(getattr(table, "name", None))
    if watched is None:
        return
    if state.is_update:
        values = getattr(state.statement, "_values", None)
        if values is not None and not ({getattr(c, "key", str(c)) for c in values} & watched):
            return
    lock(state.session)
    state.session.info.setdefault(SCOPE, Scope()).everything = True


@event.listens_for(Session, "before_commit")
def _before_commit(session):
    if session.new or session.dirty or session.deleted:
        session.flush()  # records the scope of what is still pending
    scope = session.info.pop(SCOPE, None)
    if scope:
        run(scope, session)


@event.listens_for(Session, "after_commit")
def _after_commit(session):
    session.info.pop(LOCKED, None)
    session.info.pop(SCOPE, None)
    if session.info.pop(CHANGED, False):
        store.invalidate()  # bulk statements: no ORM object told the credential cache


@event.listens_for(Session, "after_rollback")
def _after_rollback(session):
    for k in (SCOPE, LOCKED, CHANGED, TOUCHED):
        session.info.pop(k, None)


def lock(session=None) -> None:
    """Take the reconcile lock for the rest of this transaction (PostgreSQL; SQLite has one
    writer at a time anyway). The session hooks above call it: before a flush that touches
    access, and before a ``SELECT ... FOR UPDATE`` of flows or credentials."""
    session = session or db.session
    if session.info.get(LOCKED):
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        # these statements touch few rows each; their correlated subqueries look costly to the
        # planner, whose JIT compilation would cost more than running them
        session.execute(text("SET LOCAL jit = off"))
    session.info[LOCKED] = True


# -- the set-based pass ------------------------------------------------------------------------

_F = Flow.__table__.alias("f")  # built once: setting up an alias costs more than running these statements
_C = Credential.__table__.alias("c")


def _in_scope(row, mode: str, scope: Scope, key_owners: set[int]):
    if scope.everything:
        return true()
    ident = row.c.user_id if mode == "user" else row.c.virtual_key_id
    ids = (scope.users | key_owners) if mode == "user" else scope.keys
    parts = [c for c in (ident.in_(sorted(ids)) if ids else None,
                         row.c.mcp_server_id.in_(sorted(scope.servers)) if scope.servers else None) if c is not None]
    return or_(*parts) if parts else false()


def _owners(session, keys: set[int]) -> set[int]:
    if not keys:
        return set()
    return set(session.scalars(select(VirtualKey.owner_id).where(
        VirtualKey.id.in_(sorted(keys)), VirtualKey.owner_id.is_not(None))))


def _issued_by(session, keys: set[int]) -> set[int]:
    """Keys issued (through request_key, at any depth) by these keys: an edit of an issuer
    changes what they may reach too."""
    found, frontier = set(), set(keys)
    for _ in range(access.MAX_ISSUER_CHAIN + 1):
        if not frontier:
            break
        agents = [f"vk:{k}" for k in sorted(frontier)]
        issued = set(session.scalars(select(VirtualKey.id).where(
            VirtualKey.source == access.ISSUED, VirtualKey.agent_id.in_(agents)))) - found - keys
        found |= issued
        frontier = issued
    return found


def _where_ids(session, column, ids: list):
    """``column`` in ``ids``, as clauses to run one after the other: one ``= ANY(array)`` on
    PostgreSQL (a primary-key lookup per row, whatever the table size), chunks of IN lists on
    SQLite (its bound-parameter limit)."""
    if session.get_bind().dialect.name == "postgresql":
        return [column == any_(bindparam("ids", ids, type_=ARRAY(column.type)))]
    return [column.in_(ids[i:i + 500]) for i in range(0, len(ids), 500)]


def run(scope: Scope, session=None) -> Result:
    """Reconcile the bindings in ``scope`` inside the current transaction: a few statements
    (find and lock the rows that must change, then change them by primary key), however many
    rows change and whatever the size of the tables."""
    session = session or db.session
    lock(session)
    now = utcnow()
    if len(scope.keys) + len(scope.users) + len(scope.servers) > MAX_SCOPE_IDS:
        scope = Scope(everything=True, rekeyed=scope.rekeyed)  # a mass import: one pass beats huge IN lists
    if not scope.everything:
        scope.keys |= _issued_by(session, scope.keys)
    owners = set() if scope.everything else _owners(session, scope.keys)
    dead = access.dead_issued_keys(session, now)
    result = Result()

    # flows first, then credentials (each in id order): the order every writer of both follows
    f = _F
    doomed = session.scalars(select(f.c.id).where(f.c.status == "pending", or_(*[
        and_(f.c.auth_mode == mode, _in_scope(f, mode, scope, owners), ~access.sql_allowed(f, mode, now, dead))
        for mode in RECONCILED_MODES])).order_by(f.c.id).with_for_update()).all()
    flows = Flow.__table__
    if doomed:
        for where in _where_ids(session, flows.c.id, doomed):
            session.execute(delete(flows).where(where))
    result.flows_deleted = len(doomed)

    c = _C
    flips = []
    for mode in RECONCILED_MODES:
        allowed = access.sql_allowed(c, mode, now, dead)
        flips.append(and_(c.c.auth_mode == mode, _in_scope(c, mode, scope, owners), or_(
            and_(c.c.status == "active", ~allowed), and_(c.c.status == "orphaned", allowed))))
    rows = session.execute(select(c.c.id, c.c.status).where(or_(*flips)).order_by(c.c.id).with_for_update()).all()
    creds = Credential.__table__
    for new_status in ("orphaned", "active"):
        ids = [i for i, old in rows if old != new_status]
        for where in _where_ids(session, creds.c.id, ids) if ids else ():
            session.execute(update(creds).where(where).values(status=new_status, status_changed_at=now,
                                                             updated_at=now))
    result.orphaned = sum(1 for _, old in rows if old == "active")
    result.reactivated = len(rows) - result.orphaned
    for server_id in sorted(scope.rekeyed):
        result.needs_update += _needs_update(session, server_id, now)

    if result.changed:
        session.info[CHANGED] = True
        for change in ("orphaned", "reactivated", "needs_update"):
            metrics.RECONCILED.labels(change).inc(getattr(result, change))
        metrics.RECONCILED.labels("pending_flows_deleted").inc(result.flows_deleted)
        record("credentials.reconcile", None,
               f"orphaned={result.orphaned} reactivated={result.reactivated} "
               f"pending_flows_deleted={result.flows_deleted} needs_update={result.needs_update} "
               f"({scope.describe()})",
               target_name=scope.describe())
        log.info("reconciled %s: orphaned=%d reactivated=%d pending_flows_deleted=%d", scope.describe(),
                 result.orphaned, result.reactivated, result.flows_deleted)
    return result


def _needs_update(session, server_id: int, now) -> int:
    """A server's per-user header keys changed: its active credentials must be resubmitted."""
    creds = Credential.__table__
    ids = list(session.scalars(select(creds.c.id).where(creds.c.mcp_server_id == server_id, creds.c.status == "active")
                               .order_by(creds.c.id).with_for_update()))
    for where in _where_ids(session, creds.c.id, ids) if ids else ():
        session.execute(update(creds).where(where).values(status="needs_update", status_changed_at=now,
                                                         updated_at=now))
    if ids:
        server = session.get(McpServer, server_id)
        record("credential.needs_update", server,
               f"{len(ids)} credential(s) must be resubmitted: header keys changed")
    return len(ids)


def run_all(session=None) -> Result:
    """Every binding at once: what the sweeper runs (keys expire without an edit) and what a
    check of the invariant compares against."""
    return run(Scope(everything=True), session)
