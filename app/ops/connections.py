"""The sessions list (public name: /sessions, /api/v1/sessions; internally "connections", since
"session" also names MCP sessions and dashboard logins): every stored per-user credential and
every pending flow, as one list of rows.

One row shape for every kind of credential (``auth_kind``: ``headers`` now, ``oauth`` later) and
for the pending flows that create them. The list is one SQL ``UNION ALL`` of the two tables,
filtered, made visible to the viewer, ordered newest first (``created_at`` then a stable
tiebreak) and paginated in the database, with the total from a ``COUNT`` in the database too:
nothing loads a whole table into memory. Each branch is ordered and cut to ``offset + limit``
rows on its own (so each can walk its ``(created_at, id)`` index), then the union is ordered
and cut again.

Public row ids are ``cred_<credential id>`` and ``flow_<flow id>``; anything else is not found.

Visibility: admins see every row. Members see ``user`` rows of their own user id and ``vk``
rows of keys they own; never ``session`` rows (anonymous development mode). A row the viewer
cannot see is "not found", for reading, re-authentication and revocation alike.

A pending flow is listed only while unexpired, and hidden while the same binding has an
``active`` credential (the row to look at is the credential). Used or expired flows are not
sessions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, and_, cast, exists, func, literal_column, null, or_, select, \
    union_all
from sqlalchemy.orm.exc import StaleDataError

from ..audit import record
from ..credentials import flows
from ..credentials.bindings import Binding
from ..credentials.flows import FLOW_ID_RE
from ..credentials.resolvers import flow_resolver, resolver
from ..extensions import db
from ..models import Credential, Flow, McpServer, User, VirtualKey
from ..models.base import MAX_ID, iso, utcnow
from ..models.credentials import AUTH_MODES, IDENTITY_COLUMN
from .errors import BadRequest, Forbidden, NotFound
from .fields import MAX_QUERY

CREDENTIAL_STATUSES = ("active", "needs_update", "orphaned", "needs_reauth")
FLOW_STATUSES = ("pending",)
STATUSES = CREDENTIAL_STATUSES + FLOW_STATUSES
AUTH_KINDS = ("headers", "oauth")
KINDS = ("credential", "flow")
ROW_ID_RE = re.compile(r"^(cred_[1-9][0-9]*|flow_[A-Za-z0-9_-]{1,64})$")  # public row ids (FLOW_ID_RE)
CHOICES = {"status": STATUSES, "auth_mode": AUTH_MODES, "auth_kind": AUTH_KINDS, "kind": KINDS}


@dataclass(frozen=True)
class Filters:
    q: str = ""
    status: tuple = ()
    auth_mode: tuple = ()
    auth_kind: tuple = ()
    kind: tuple = ()
    server_id: tuple = ()

    def params(self) -> dict:
        """The filters as query parameters (comma-separated lists; empty ones left out)."""
        out = {"q": self.q} if self.q else {}
        for name in ("status", "auth_mode", "auth_kind", "kind", "server_id"):
            values = getattr(self, name)
            if values:
                out[name] = ",".join(str(v) for v in values)
        return out


def _items(args, name: str) -> list[str] | None:
    """Every comma-separated item of a (possibly repeated) parameter; None when absent or empty."""
    raws = [r for r in args.getlist(name) if r.strip() != ""]
    if not raws:
        return None
    return [item.strip() for raw in raws for item in raw.split(",")]


def parse_filters(args, strict: bool = True) -> Filters:
    """The filters of a query string. ``strict`` (the API): any bad value is a 400 naming the
    parameter, nothing else happens. Not strict (the page): bad values are dropped."""
    fields, out = {}, {}
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY or "\x00" in q:
        if strict:
            fields["q"] = f"at most {MAX_QUERY} characters, without NUL"
        q = q.replace("\x00", "")[:MAX_QUERY]
    out["q"] = q
    for name, allowed in CHOICES.items():
        items = _items(args, name)
        if items is None:
            continue
        bad = [i for i in items if i not in allowed]
        if bad:
            fields[name] = f"unknown value {bad[0][:40]!r}; one or more (comma-separated) of: " + ", ".join(allowed)
        out[name] = tuple(dict.fromkeys(i for i in items if i in allowed))
    items = _items(args, "server_id")
    if items is not None:
        good = [i for i in items if i.isascii() and i.isdigit() and 1 <= int(i) <= MAX_ID]
        if len(good) != len(items):
            fields["server_id"] = "must be positive integers, comma-separated"
        out["server_id"] = tuple(dict.fromkeys(int(i) for i in good))
    if fields and strict:
        raise BadRequest("invalid filter: " + ", ".join(sorted(fields)), fields)
    return Filters(**out)


# --- the query ---------------------------------------------------------------------------

MAX_INLINE_IDS = 1000  # ids resolved up front and sent as a list; more stay a subquery


def _ids(query) -> list | object:
    """The ids a small query selects, as a list the planner can estimate (and use indexes
    with); a subquery instead when there are too many."""
    ids = list(db.session.scalars(query.limit(MAX_INLINE_IDS + 1)))
    return query.scalar_subquery() if len(ids) > MAX_INLINE_IDS else ids


@dataclass
class _Lookups:
    """What the branches share, resolved once per request: the keys a member owns, and the
    servers, users and keys whose names match the search."""
    owned_keys: list | object | None = None
    servers: list | object = ()
    users: list | object = ()
    keys: list | object = ()


def _lookups(viewer, term: str) -> _Lookups:
    out = _Lookups()
    if not viewer.is_admin:
        out.owned_keys = _ids(select(VirtualKey.id).where(VirtualKey.owner_id == viewer.id))
    if term:
        low = term.lower()
        out.servers = _ids(select(McpServer.id).where(func.lower(McpServer.name).contains(low, autoescape=True)))
        out.users = _ids(select(User.id).where(func.lower(User.email).contains(low, autoescape=True)))
        out.keys = _ids(select(VirtualKey.id).where(func.lower(VirtualKey.name).contains(low, autoescape=True)))
    return out


def _visible(t, viewer, lk: _Lookups):
    if viewer.is_admin:
        return None
    return or_(and_(t.auth_mode == "user", t.user_id == viewer.id),
               and_(t.auth_mode == "vk", t.virtual_key_id.in_(lk.owned_keys)))


def _search(t, term: str, row_kind: str, lk: _Lookups):
    """Server name, user e-mail or key name containing the term (case-insensitive); a key id,
    an MCP session id or a row id equal to it."""
    arms = [t.mcp_server_id.in_(lk.servers),
            and_(t.auth_mode == "user", t.user_id.in_(lk.users)),
            and_(t.auth_mode == "vk", t.virtual_key_id.in_(lk.keys)),
            and_(t.auth_mode == "session", t.session_id == term)]
    if term.isascii() and term.isdigit() and int(term) <= MAX_ID:
        arms.append(and_(t.auth_mode == "vk", t.virtual_key_id == int(term)))
    prefix = "cred_" if row_kind == "credential" else "flow_"
    if term.startswith(prefix) and len(term) > len(prefix):
        rest = term[len(prefix):]
        if row_kind == "flow" and FLOW_ID_RE.fullmatch(rest):
            arms.append(t.id == rest)
        elif rest.isascii() and rest.isdigit() and int(rest) <= MAX_ID:
            arms.append(t.id == int(rest))
    return or_(*arms)


def _not_superseded(f=Flow) -> list:
    """No active credential on the flow's binding. One NOT EXISTS per identity column (the
    flow's other two are NULL and match nothing), so the database runs each as an anti-join on
    that mode's unique binding index."""
    return [~exists().where(Credential.auth_mode == mode, getattr(Credential, col) == getattr(f, col),
                            Credential.mcp_server_id == f.mcp_server_id, Credential.status == "active")
            for mode, col in IDENTITY_COLUMN.items()]


def _conditions(row_kind: str, filters: Filters, viewer, now: datetime, lk: _Lookups, only=None) -> list | None:
    """The WHERE of one branch, or None when the filters exclude the whole branch."""
    t = Credential if row_kind == "credential" else Flow
    if filters.kind and row_kind not in filters.kind:
        return None
    conds = []
    if row_kind == "credential":
        if filters.status:
            wanted = [s for s in filters.status if s in CREDENTIAL_STATUSES]
            if not wanted:
                return None
            conds.append(t.status.in_(wanted))
        if filters.auth_kind:
            conds.append(t.auth_kind.in_(filters.auth_kind))
    else:
        if filters.status and "pending" not in filters.status:
            return None
        conds += [t.status == "pending", t.expires_at > now, *_not_superseded(t)]
        if filters.auth_kind:
            conds.append(t.kind.in_(filters.auth_kind))
    if filters.auth_mode:
        conds.append(t.auth_mode.in_(filters.auth_mode))
    if filters.server_id:
        conds.append(t.mcp_server_id.in_(filters.server_id))
    if filters.q:
        conds.append(_search(t, filters.q, row_kind, lk))
    visible = _visible(t, viewer, lk)
    if visible is not None:
        conds.append(visible)
    if only is not None:
        if only[0] != row_kind:
            return None
        conds.append(t.id == only[1])
    return conds


def _branch(row_kind: str, conds: list, cut: int | None):
    t = Credential if row_kind == "credential" else Flow
    if row_kind == "credential":
        cols = [literal_column("'credential'", String).label("kind"), t.id.label("cred_id"),
                cast(null(), String(64)).label("flow_id"), t.auth_kind.label("auth_kind"), t.status.label("status"),
                t.header_keys.label("header_keys"), t.expires_at.label("expires_at"), t.scopes.label("scopes")]
    else:
        cols = [literal_column("'flow'", String).label("kind"), cast(null(), Integer).label("cred_id"),
                t.id.label("flow_id"), t.kind.label("auth_kind"), t.status.label("status"),
                cast(null(), Credential.header_keys.type).label("header_keys"), t.expires_at.label("expires_at"),
                cast(null(), Credential.scopes.type).label("scopes")]
    cols += [t.auth_mode.label("auth_mode"), t.user_id.label("user_id"), t.virtual_key_id.label("virtual_key_id"),
             t.session_id.label("session_id"), t.mcp_server_id.label("server_id"),
             t.created_at.label("created_at"), t.updated_at.label("updated_at")]
    q = select(*cols).where(*conds).order_by(t.created_at.desc(), t.id.desc())
    if cut is not None:
        q = q.limit(cut)
    return q


def _count(row_kind: str, conds: list):
    t = Credential if row_kind == "credential" else Flow
    return select(func.count()).select_from(t).where(*conds).scalar_subquery()


def _rows(viewer, filters: Filters, limit: int, offset: int, only=None) -> tuple[list[dict], int | None]:
    now = utcnow()
    lk = _lookups(viewer, filters.q)
    branches = {k: _conditions(k, filters, viewer, now, lk, only) for k in KINDS}
    branches = {k: c for k, c in branches.items() if c is not None}
    if not branches:
        return [], 0
    total = None
    if only is None:
        counts = [_count(k, c) for k, c in branches.items()]
        total = db.session.scalar(select(sum(counts[1:], counts[0])))
    parts = [select(*_branch(k, c, offset + limit).subquery().c) for k, c in branches.items()]
    page = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("page")
    query = (select(page, McpServer.name.label("server_name"), McpServer.auth_type.label("server_auth_type"),
                    McpServer.per_user_header_keys.label("server_header_keys"),
                    User.email.label("user_email"), VirtualKey.name.label("key_name"))
             .join(McpServer, McpServer.id == page.c.server_id)
             .outerjoin(User, and_(page.c.auth_mode == "user", User.id == page.c.user_id))
             .outerjoin(VirtualKey, and_(page.c.auth_mode == "vk", VirtualKey.id == page.c.virtual_key_id))
             .order_by(page.c.created_at.desc(), page.c.kind.desc(), page.c.cred_id.desc(), page.c.flow_id.desc())
             .limit(limit).offset(offset))
    return [_row(r, viewer) for r in db.session.execute(query).mappings()], total


def can_reauth(r, viewer) -> bool:
    """Credential rows only, not orphaned, of a server that still runs flows of that kind; a
    ``user`` row only by that user (an admin cannot submit as someone else). ``vk`` and
    ``session`` rows by whoever sees them (admins; a key's owner)."""
    if r["kind"] != "credential" or r["status"] == "orphaned":
        return False
    if flow_resolver(r["auth_kind"], r["server_auth_type"]) is None:
        return False
    if r["auth_mode"] == "user":
        return r["user_id"] == viewer.id
    return True


def _row(r, viewer) -> dict:
    is_cred = r["kind"] == "credential"
    header_keys = r["header_keys"] if is_cred else (r["server_header_keys"] if r["auth_kind"] == "headers" else [])
    return {
        "id": f"cred_{r['cred_id']}" if is_cred else f"flow_{r['flow_id']}",
        "kind": r["kind"], "auth_kind": r["auth_kind"], "auth_mode": r["auth_mode"],
        "user": {"id": r["user_id"], "email": r["user_email"]} if r["auth_mode"] == "user" else None,
        "virtual_key": ({"id": r["virtual_key_id"], "name": r["key_name"]} if r["auth_mode"] == "vk" else None),
        "session_id": r["session_id"] if r["auth_mode"] == "session" else None,
        "server": {"id": r["server_id"], "name": r["server_name"]},
        "status": r["status"],
        "header_keys": sorted(header_keys or []),
        "scopes": (list(r["scopes"] or []) if is_cred else None) if r["auth_kind"] == "oauth" else None,
        "created_at": iso(r["created_at"]), "updated_at": iso(r["updated_at"]), "expires_at": iso(r["expires_at"]),
        "can_reauth": can_reauth(r, viewer),
        # for the page (not part of the API answer)
        "_created": r["created_at"], "_updated": r["updated_at"], "_expires": r["expires_at"],
        "_cred_id": r["cred_id"], "_flow_id": r["flow_id"], "_server_auth_type": r["server_auth_type"],
    }


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def list_sessions(viewer, filters: Filters, limit: int, offset: int) -> tuple[list[dict], int]:
    rows, total = _rows(viewer, filters, limit, offset)
    return rows, total


def parse_id(row_id) -> tuple[str, int | str] | None:
    if not isinstance(row_id, str):
        return None
    if row_id.startswith("cred_"):
        rest = row_id[5:]
        if rest.isascii() and rest.isdigit() and not rest.startswith("0") and int(rest) <= MAX_ID:
            return "credential", int(rest)
    elif row_id.startswith("flow_"):
        rest = row_id[5:]
        if FLOW_ID_RE.fullmatch(rest):
            return "flow", rest
    return None


def get_session(viewer, row_id) -> dict:
    """The row as the viewer would see it in the list; NotFound when they cannot (or it is
    not a session: a used, expired or superseded flow)."""
    only = parse_id(row_id)
    rows = _rows(viewer, Filters(), 1, 0, only=only)[0] if only else []
    if not rows:
        raise NotFound("no such session")
    return rows[0]


# --- actions -----------------------------------------------------------------------------

def _describe(row: dict) -> str:
    who = {"user": lambda: f"user {row['user']['email']}", "vk": lambda: f"key {row['virtual_key']['name']}",
           "session": lambda: f"session {row['session_id'][:12]}…"}[row["auth_mode"]]()
    return f"{row['auth_kind']} {row['kind']} of {who} on {row['server']['name']}"


def _target(row: dict) -> str:
    identity = {"user": (row["user"] or {}).get("id"), "vk": (row["virtual_key"] or {}).get("id"),
                "session": row["session_id"]}[row["auth_mode"]]
    return f"{row['auth_mode']}:{identity}:{row['server']['id']}"


def _binding(row: dict) -> Binding:
    identity = {"user": lambda: row["user"]["id"], "vk": lambda: row["virtual_key"]["id"],
                "session": lambda: row["session_id"]}[row["auth_mode"]]()
    return Binding(row["auth_mode"], identity, row["server"]["id"])


def _start_flow(binding: Binding, auth_type: str) -> dict:
    """The binding's flow through the server's resolver: {url, flow_id, expires_at, _token}."""
    flow_id, token = resolver(auth_type).start_flow(binding)
    flow = db.session.get(Flow, flow_id)
    return {"url": flows.link(flow_id, token), "flow_id": flow_id,
            "expires_at": iso(flow.expires_at), "_token": token}


def reauth(viewer, row_id) -> dict:
    """Start (or refresh) the flow of the row's binding: {url, flow_id, expires_at}.
    NotFound for rows the viewer cannot see, Forbidden when ``can_reauth`` is false."""
    row = get_session(viewer, row_id)
    if not row["can_reauth"]:
        if row["kind"] == "flow":
            raise Forbidden("this is a pending flow: open its link, or revoke it")
        if row["status"] == "orphaned":
            raise Forbidden("this credential is orphaned (its grant is gone); revoke it instead")
        if row["auth_mode"] == "user":
            raise Forbidden("only the person this credential belongs to can re-authenticate it")
        raise Forbidden("this server no longer takes credentials of this kind; revoke it instead")
    db.session.rollback()  # start_flow runs its own transaction
    out = _start_flow(_binding(row), row["_server_auth_type"])
    record("session.reauth", db.session.get(Credential, row["_cred_id"]),
           f"flow started for the {_describe(row)}", target_name=_target(row))
    db.session.commit()
    return out


def revoke(viewer, row_id) -> None:
    """Delete the binding's pending flows, then the row itself (a credential or a flow)."""
    row = get_session(viewer, row_id)
    try:
        if row["kind"] == "credential":
            cred = db.session.get(Credential, row["_cred_id"])
            if cred is None:
                raise NotFound("no such session")
            resolver(row["_server_auth_type"]).revoke(cred, action="session.revoke",
                                                     detail=f"revoked the {_describe(row)}")
            return
        flow = db.session.get(Flow, row["_flow_id"])
        if flow is None:
            raise NotFound("no such session")
        db.session.delete(flow)
        db.session.flush()
        event = record("session.revoke", None, f"revoked the {_describe(row)}", target_name=_target(row))
        event.target_type = "flows"
        db.session.commit()
    except StaleDataError:  # deleted by someone else in the meantime
        db.session.rollback()
        raise NotFound("no such session") from None


# --- connecting a server the person is granted ---------------------------------------------

def connectable(user) -> list:
    """per_user_headers and per_user_oauth servers in the person's effective allowlist (the union over the usable
    keys they own, as the gateway computes it) for which they have no credential yet."""
    from .. import snapshot

    snap = snapshot.current()
    allowed = set(snap.user_allowlist(user.id, utcnow()))
    if not allowed:
        return []
    have = set(db.session.scalars(select(Credential.mcp_server_id).where(
        Credential.auth_mode == "user", Credential.user_id == user.id)))
    return sorted((s for sid, s in snap.servers.items()
                   if sid in allowed and sid not in have and s.auth_type in ("per_user_headers", "per_user_oauth")),
                  key=lambda s: s.name)


def connect(user, server_id) -> dict:
    """Start the person's own (``user``-mode) flow for a server from ``connectable``."""
    server = next((s for s in connectable(user) if s.id == server_id), None)
    if server is None:
        raise NotFound("no such server to connect")
    db.session.rollback()
    out = _start_flow(Binding("user", user.id, server.id), server.auth_type)
    record("session.connect", db.session.get(McpServer, server.id), f"flow started for user {user.email}",
           target_name=server.name)
    db.session.commit()
    return out

