"""The one rule of effective access, in the two forms its users need.

A virtual key is **usable** when it is active, not expired and its owner (if any) is active; a
key issued by ``portcullis__request_key`` (``source`` ``mcp``, ``agent_id`` ``vk:<issuer id>``)
also needs its issuer to be usable, never outlives it, and its service grants are cut to the
issuer's (a chain longer than MAX_ISSUER_CHAIN, a loop or a missing issuer: not usable).

A usable key's **effective allowlist** is its explicit server grants ∪ the servers with
``allow_on_all_virtual_keys`` (not for issued keys: an allow-all server would give them tools
their issuer may not have), minus disabled servers. A person's allowlist (``user`` bindings) is
the union over the usable keys they own; an anonymous development caller gets the allow-all
servers.

- The **Python** form (``KeyView``, ``cut_to_issuer``, ``key_allowlist``, ``union``) serves the
  hot path from the snapshot's views, without a query.
- The **SQL** form (``sql_allowed``) serves reconciliation, over the tables in one statement;
  the issuer rule enters it as the set of issued keys that are not usable (``dead_issued_keys``,
  computed with the Python form: issued keys are few and short-lived).

tests/credentials/test_access_property.py proves with random keys, owners, grants, issuers,
flags and clocks that both forms agree on every binding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import and_, exists, or_, select, true

MAX_ISSUER_CHAIN = 8  # keys issued by keys issued by ...: deeper chains are not usable
ISSUER_RE = re.compile(r"^vk:([0-9]{1,10})$")
ISSUED = "mcp"  # the source of keys issued by portcullis__request_key

Allowlist = dict[int, "frozenset[str] | None"]  # server id -> allowed tool names (None = all)


# -- keys ----------------------------------------------------------------------------------

def key_status(active: bool, expires_at: datetime | None, now: datetime) -> str:
    """revoked, expired or active: a key row's own state (the API's ``status``)."""
    if not active:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


def issuer_of(source: str, agent_id: str | None) -> int | None:
    """The key that issued this one through request_key (its agent_id is ``vk:<id>``)."""
    if source != ISSUED or not agent_id:
        return None
    match = ISSUER_RE.match(agent_id)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class KeyView:
    """A virtual key as the gateway sees it: its owner's and issuers' state folded in."""

    id: int
    name: str
    owner_id: int | None
    active: bool  # the key, its owner and (issued keys) its issuers are active
    expires_at: datetime | None  # the earliest expiry along the issuer chain
    rate_limit_per_minute: int
    source: str
    agent_id: str | None
    server_grants: dict[int, frozenset[str] | None]
    service_grants: dict[int, str]
    # (key id, requests per minute) of every proxy budget a request spends: its own, then its
    # issuers' (keys issued by request_key)
    budgets: tuple[tuple[int, int], ...] = ()
    issued_by: tuple[int, ...] = field(default=())  # issuer ids, nearest first

    def __post_init__(self):
        if not self.budgets:
            object.__setattr__(self, "budgets", ((self.id, self.rate_limit_per_minute),))

    def usable(self, now: datetime) -> bool:
        return key_status(self.active, self.expires_at, now) == "active"

    @property
    def issuer_id(self) -> int | None:
        return issuer_of(self.source, self.agent_id)


def own_view(*, id: int, name: str, owner_id, owner_active: bool | None, active: bool, expires_at,
             rate_limit_per_minute: int, source: str, agent_id, server_grants, service_grants) -> KeyView:
    """A key by itself (its owner's state folded in), before its issuer is considered."""
    return KeyView(id=id, name=name, owner_id=owner_id, active=active and owner_active is not False,
                   expires_at=expires_at, rate_limit_per_minute=rate_limit_per_minute, source=source,
                   agent_id=agent_id, server_grants=server_grants, service_grants=service_grants)


def cut_to_issuer(view: KeyView, issuer: KeyView | None) -> KeyView:
    """An issued key never outlives nor outgrows its issuer (``issuer``: as seen now, None when
    it is gone): the intersection of their access, the earlier expiry, both budgets."""
    if view.issuer_id is None:
        return view
    if issuer is None:
        return replace(view, active=False)
    expiry = [t for t in (view.expires_at, issuer.expires_at) if t is not None]
    services = {sid: "read" if "read" in (scope, issuer.service_grants[sid]) else scope
                for sid, scope in view.service_grants.items() if sid in issuer.service_grants}
    return replace(view, active=view.active and issuer.active, expires_at=min(expiry) if expiry else None,
                   service_grants=services, budgets=view.budgets + issuer.budgets,
                   issued_by=(issuer.id, *issuer.issued_by))


def resolve_key(key_id: int, own, memo: dict) -> KeyView | None:
    """The key as the gateway sees it, its issuers folded in; None when it does not exist.
    ``own(id)`` gives a key by itself (``own_view``) or None; ``memo`` keeps every view built
    (each depends only on its own chain, so it serves any later key too). A broken chain (an
    issuer gone), a loop, or more than MAX_ISSUER_CHAIN issuers make a key unusable."""
    if key_id in memo:
        return memo[key_id]
    chain: list[KeyView] = []  # the key, its issuer, that one's issuer, ... up to a known view
    seen: set[int] = set()
    next_id, top, broken = key_id, None, False
    while next_id is not None:
        if next_id in memo:
            top = memo[next_id]
            broken = top is None
            break
        view = own(next_id) if next_id not in seen else None
        if view is None or len(chain) > 4 * MAX_ISSUER_CHAIN:  # gone, a loop, or absurdly long
            broken = True
            break
        seen.add(next_id)
        chain.append(view)
        next_id = view.issuer_id
    if not chain:
        memo[key_id] = None
        return None
    for view in reversed(chain):
        if view.issuer_id is None:
            top = view
        elif broken or top is None:
            top = replace(view, active=False)
        else:
            top = cut_to_issuer(view, top)
            if len(top.issued_by) > MAX_ISSUER_CHAIN:
                top = replace(top, active=False)
        memo[view.id] = top
    return memo[key_id]


# -- the Python form -------------------------------------------------------------------------

def key_allowlist(key: KeyView | None, servers) -> Allowlist:
    """The effective allowlist of a key (``None``: an anonymous development caller) over the
    snapshot's ``servers`` (id -> ServerView). Not checked here: whether the key is usable."""
    grants = key.server_grants if key is not None else {}
    out: Allowlist = {sid: tools for sid, tools in grants.items()
                      if (server := servers.get(sid)) is not None and server.enabled}
    if key is None or key.source != ISSUED:
        for server in servers.values():
            if server.allow_all and server.enabled and server.id not in grants:
                out[server.id] = None
    return out


def union(allowlists) -> Allowlist:
    """A person's allowlist: every server any of their keys reaches, with every tool any of
    them allows (None: all tools)."""
    out: Allowlist = {}
    for allowlist in allowlists:
        for sid, tools in allowlist.items():
            if sid not in out:
                out[sid] = tools
            elif out[sid] is not None:
                out[sid] = None if tools is None else out[sid] | tools
    return out


# -- the SQL form ----------------------------------------------------------------------------

def _tables():
    from .models import McpServer, User, VirtualKey, VirtualKeyServerGrant

    return (VirtualKey.__table__.alias("k"), McpServer.__table__.alias("s"),
            VirtualKeyServerGrant.__table__.alias("g"), User.__table__.alias("u"))


_K, _S, _G, _U = _tables()


def sql_allowed(row, mode: str, now: datetime, dead_keys=()):
    """SQL: the ``user`` or ``vk`` binding of ``row`` (an alias of credentials or flows) may
    reach its server: some usable key of the binding (``vk``: that key; ``user``: a key the
    person owns) reaches the server through a grant or an allow-all flag. ``dead_keys``: the
    issued keys whose issuer chain makes them unusable (``dead_issued_keys``)."""
    k, s, g, u = _K, _S, _G, _U
    # nested EXISTS: correlate explicitly (auto-correlation reaches one level up only)
    granted = or_(
        exists().where(g.c.virtual_key_id == k.c.id, g.c.mcp_server_id == row.c.mcp_server_id).correlate_except(g),
        and_(s.c.allow_on_all_virtual_keys == true(), k.c.source != ISSUED))
    usable = and_(k.c.active == true(), or_(k.c.expires_at.is_(None), k.c.expires_at > now))
    if dead_keys:
        usable = and_(usable, k.c.id.not_in(sorted(dead_keys)))
    owner_active = exists().where(u.c.id == k.c.owner_id, u.c.active == true()).correlate_except(u)
    if mode == "user":
        whose = and_(k.c.owner_id == row.c.user_id, owner_active)
    else:
        whose = and_(k.c.id == row.c.virtual_key_id, or_(k.c.owner_id.is_(None), owner_active))
    return exists().where(s.c.id == row.c.mcp_server_id, s.c.enabled == true(), whose, usable,
                          granted).correlate_except(s, k)


def dead_issued_keys(session, now: datetime) -> set[int]:
    """Ids of issued keys that are not usable because of their issuer chain, decided by the
    Python form over the rows of the issued keys and their issuers."""
    from .models import User, VirtualKey

    k = VirtualKey.__table__
    u = User.__table__
    cols = (k.c.id, k.c.active, k.c.expires_at, k.c.owner_id, k.c.source, k.c.agent_id, u.c.active)
    rows = {r[0]: r for r in session.execute(
        select(*cols).select_from(k.outerjoin(u, u.c.id == k.c.owner_id)).where(k.c.source == ISSUED))}
    if not rows:
        return set()
    roots = {issuer_of(r[4], r[5]) for r in rows.values()} - set(rows) - {None}  # issuers not issued themselves
    if roots:
        rows.update({r[0]: r for r in session.execute(
            select(*cols).select_from(k.outerjoin(u, u.c.id == k.c.owner_id)).where(k.c.id.in_(sorted(roots))))})

    def own(key_id: int) -> KeyView | None:
        r = rows.get(key_id)
        if r is None:
            return None
        return own_view(id=r[0], name="", owner_id=r[3], owner_active=r[6] if r[3] is not None else None,
                        active=r[1], expires_at=r[2], rate_limit_per_minute=1, source=r[4], agent_id=r[5],
                        server_grants={}, service_grants={})

    memo: dict = {}
    return {key_id for key_id, r in rows.items()
            if r[4] == ISSUED and _own_usable(r, now) and not resolve_key(key_id, own, memo).usable(now)}


def _own_usable(r, now) -> bool:
    """Usable by its own row (active, unexpired, owner active): only those need the dead set;
    the SQL form refuses the others by itself."""
    return key_status(r[1], r[2], now) == "active" and (r[3] is None or r[6] is True)
