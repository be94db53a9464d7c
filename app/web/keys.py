"""Virtual keys: admins see and manage all, members see (and may revoke) the keys they own.

A new key's secret is shown once, on the first view of its page after creation: the create
POST parks it, encrypted, in the signed session cookie and redirects; the key page takes it out
again (so a reload, another tab or the list never shows it) and only if it still matches the
stored hash of a key created minutes ago.
"""
from __future__ import annotations

from datetime import timedelta

from flask import flash, g, make_response, render_template, request, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..auth import admin_required, login_required
from ..crypto import DecryptionError, keyring
from ..extensions import db
from ..models import McpServer, Service, User, VirtualKey
from ..models.base import utcnow
from ..models.keys import SCOPES
from ..ops import keys as ops
from ..ops.errors import OpError
from . import bp, is_htmx
from .forms import comma_list, done, form_error, int_or_raw, text
from .listing import matching, paginate, search_term, table_page

REVEAL = "new_virtual_key"
REVEAL_WINDOW = timedelta(minutes=10)
DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


@bp.get("/keys")
@login_required
def keys():
    term = search_term()
    query = (select(VirtualKey).options(selectinload(VirtualKey.owner), selectinload(VirtualKey.server_grants),
                                        selectinload(VirtualKey.service_grants))
             .order_by(VirtualKey.created_at.desc(), VirtualKey.id.desc()))
    if not g.user.is_admin:
        query = query.where(VirtualKey.owner_id == g.user.id)
    query = matching(query, term, VirtualKey.name, VirtualKey.key_prefix, VirtualKey.source)
    return table_page("web/keys.html", "_partials/keys_table.html", page=paginate(query, term))


def _users():
    return db.session.scalars(select(User).order_by(User.email)).all()


def _local(dt) -> str:
    return dt.strftime(DATETIME_LOCAL) if dt else ""


def _settings_values(key: VirtualKey | None) -> dict:
    if key is None:
        return {"name": "", "owner_id": "", "rate_limit_per_minute": "60", "expires_at": ""}
    return {"name": key.name, "owner_id": str(key.owner_id or ""),
            "rate_limit_per_minute": str(key.rate_limit_per_minute), "expires_at": _local(key.expires_at)}


def _settings_from_form() -> dict:
    return {name: text(name) for name in ("name", "owner_id", "rate_limit_per_minute", "expires_at")}


def _settings_data(key: VirtualKey | None) -> dict:
    """The settings form as the dict the JSON API takes. Expiry is datetime-local, read as UTC."""
    data = {"name": text("name"), "owner_id": int_or_raw(text("owner_id"))}
    rate = int_or_raw(text("rate_limit_per_minute"))
    if rate is not None or key is not None:
        data["rate_limit_per_minute"] = rate
    expires = text("expires_at").strip()
    if key is None:
        if expires:
            data["expires_at"] = expires
    elif expires != _local(key.expires_at):  # only a change: an old expiry need not be in the future
        data["expires_at"] = expires or None
    return data


@bp.route("/keys/new", methods=["GET", "POST"])
@admin_required
def key_new():
    if request.method == "GET":
        return render_template("web/key_new.html", users=_users(), values=_settings_values(None), errors={})
    try:
        key, secret = ops.create_key(_settings_data(None), source="dashboard")
        db.session.commit()
    except OpError as e:
        return form_error("web/key_new.html", e, users=_users(), values=_settings_from_form())
    session[REVEAL] = {"id": key.id, "secret": keyring().encrypt(secret)}
    return done(url_for("web.key_detail", key_id=key.id))


def _take_secret(key: VirtualKey) -> str | None:
    """The secret of a key just created in this session, once."""
    parked = session.get(REVEAL)
    if not parked or parked.get("id") != key.id:
        return None
    session.pop(REVEAL)
    try:
        secret = keyring().decrypt(parked["secret"], "session.new_virtual_key")
    except (DecryptionError, KeyError, AttributeError):
        return None
    if VirtualKey.hash_of(secret) != key.key_hash or utcnow() - key.created_at > REVEAL_WINDOW:
        return None
    return secret


def _tool_names(server: McpServer) -> list[str]:
    names = []
    for tool in server.tools or []:
        name = tool.get("name") if isinstance(tool, dict) else tool
        if isinstance(name, str) and name:
            names.append(name)
    return sorted(set(names))


def _grant_rows(key: VirtualKey, from_form: bool = False) -> dict:
    """Every server and service with this key's grant on it (as stored, or as just submitted)."""
    if from_form:
        chosen = {}
        for raw in request.form.getlist("server"):
            chosen[raw] = request.form.getlist(f"tools:{raw}") or comma_list(text(f"tools_text:{raw}")) or None
        scopes = {raw: text(f"scope:{raw}") for raw in request.form.getlist("service")}
    else:
        chosen = {str(gr.mcp_server_id): gr.tools for gr in key.server_grants}
        scopes = {str(gr.service_id): gr.scope for gr in key.service_grants}
    servers = []
    for server in db.session.scalars(select(McpServer).order_by(McpServer.name)):
        sid = str(server.id)
        tools = chosen.get(sid)
        known = _tool_names(server)
        servers.append({
            "server": server, "granted": sid in chosen, "tools": tools or [],
            "known_tools": sorted(set(known) | set(tools or [])) if known else [],
        })
    services = [{"service": s, "granted": str(s.id) in scopes, "scope": scopes.get(str(s.id)) or "read"}
                for s in db.session.scalars(select(Service).order_by(Service.name))]
    return {"server_rows": servers, "service_rows": services, "scopes": SCOPES}


def _grants_data() -> dict:
    """The grants editor as {"mcp_servers": [...], "services": [...]} (empty tools = all tools)."""
    servers = []
    for raw in request.form.getlist("server"):
        tools = request.form.getlist(f"tools:{raw}") or comma_list(text(f"tools_text:{raw}"))
        servers.append({"server_id": int_or_raw(raw), "tools": tools or None})
    services = [{"service_id": int_or_raw(raw), "scope": text(f"scope:{raw}") or "read"}
                for raw in request.form.getlist("service")]
    return {"mcp_servers": servers, "services": services}


def _detail(key: VirtualKey, status: int = 200, **context):
    context.setdefault("values", _settings_values(key))
    context.setdefault("errors", {})
    context.setdefault("grant_errors", {})
    context.setdefault("grants", _grant_rows(key))
    body = render_template("web/key_detail.html", key=key, users=_users() if g.user.is_admin else [], **context)
    resp = make_response(body, status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/keys/<id:key_id>")
@login_required
def key_detail(key_id: int):
    key = ops.get_key(key_id, viewer=g.user)
    return _detail(key, secret=_take_secret(key))


@bp.post("/keys/<id:key_id>")
@admin_required
def key_update(key_id: int):
    key = ops.get_key(key_id)
    try:
        ops.update_key(key, _settings_data(key))
        db.session.commit()
    except OpError as e:
        db.session.rollback()
        key = ops.get_key(key_id)
        fields = dict(e.fields or {})
        return _detail(key, 422, values=_settings_from_form(), errors=fields,
                       error=None if fields else e.message)
    flash("Key settings saved.", "success")
    return done(url_for("web.key_detail", key_id=key.id))


@bp.post("/keys/<id:key_id>/grants")
@admin_required
def key_grants(key_id: int):
    key = ops.get_key(key_id)
    try:
        ops.update_key(key, _grants_data())
        db.session.commit()
    except OpError as e:
        db.session.rollback()
        key = ops.get_key(key_id)
        fields = dict(e.fields or {})
        if not fields:
            fields = {"grants": e.message}
        grants = _grant_rows(key, from_form=True)
        if is_htmx():
            return render_template("_partials/key_grants.html", key=key, grants=grants, grant_errors=fields), 422
        return _detail(key, 422, grants=grants, grant_errors=fields)
    if is_htmx():
        return render_template("_partials/key_grants.html", key=key, grants=_grant_rows(key), grant_errors={},
                               saved=True)
    flash("Grants saved.", "success")
    return done(url_for("web.key_detail", key_id=key.id))


@bp.post("/keys/<id:key_id>/revoke")
@login_required
def key_revoke(key_id: int):
    key = ops.get_key(key_id, viewer=g.user)  # a member may revoke the keys they own
    ops.revoke_key(key)
    db.session.commit()
    if is_htmx() and request.args.get("where") != "page":
        return render_template("_partials/key_row.html", key=key)
    flash(f"Virtual key {key.name} revoked: it no longer works.", "success")
    return done(url_for("web.key_detail", key_id=key.id))


@bp.post("/keys/<id:key_id>/delete")
@login_required
def key_delete(key_id: int):
    key = ops.get_key(key_id, viewer=g.user)
    name = key.name
    ops.delete_key(key)
    db.session.commit()
    flash(f"Virtual key {name} deleted.", "success")
    return done(url_for("web.keys"))
