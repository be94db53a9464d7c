"""MCP servers (admin): list with live search, create, edit, delete."""
from __future__ import annotations

from itertools import zip_longest

from flask import flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from ..auth import admin_required
from ..extensions import db
from ..models import McpServer
from ..models import UpstreamOAuth, User
from ..models.servers import AUTH_TYPES, OAUTH_TYPES
from ..ops import servers as ops
from ..ops.errors import Invalid, OpError
from ..ops.servers import OAUTH_ENDPOINTS as ENDPOINTS
from . import bp, is_htmx
from .forms import checked, comma_list, done, form_error, number_or_raw, text
from .listing import matching, paginate, search_term, table_page


@bp.get("/servers")
@admin_required
def servers():
    term = search_term()
    query = matching(select(McpServer).order_by(McpServer.name), term, McpServer.name, McpServer.url)
    return table_page("web/servers.html", "_partials/servers_table.html", page=paginate(query, term))


def _new_header_rows() -> tuple[dict, list[str]]:
    """The name/value rows typed into the form as {name: value}; also the names, to re-show them."""
    headers, names, dupes = {}, [], []
    for name, value in zip_longest(request.form.getlist("header_name"), request.form.getlist("header_value"),
                                   fillvalue=""):
        name = name.strip()
        if not name and not value.strip():
            continue  # an empty row
        names.append(name)
        if name in headers:
            dupes.append(name)
        headers[name] = value
    if dupes:
        raise Invalid("duplicate header", {"headers": f"{dupes[0]} appears more than once"})
    return headers, names


def _values_from_form() -> dict:
    """What to show again in a form that had errors (never a header value)."""
    return {
        "name": text("name"), "url": text("url"), "auth_type": text("auth_type"),
        "per_user_header_keys": text("per_user_header_keys"),
        "allow_on_all_virtual_keys": checked("allow_on_all_virtual_keys"), "enabled": checked("enabled"),
        "connect_timeout": text("connect_timeout"), "read_timeout": text("read_timeout"),
        "new_headers": [n.strip() for n in request.form.getlist("header_name") if n.strip()],
        "removed_headers": request.form.getlist("remove_header"),
        **{f"oauth_{k}": text(f"oauth_{k}") for k in ("client_id", "scopes", "authorization_server", *ENDPOINTS)},
    }


def _values_from_server(server: McpServer) -> dict:
    return {
        "name": server.name, "url": server.url, "auth_type": server.auth_type,
        "per_user_header_keys": ", ".join(server.per_user_header_keys or []),
        "allow_on_all_virtual_keys": server.allow_on_all_virtual_keys, "enabled": server.enabled,
        "connect_timeout": f"{server.connect_timeout:g}", "read_timeout": f"{server.read_timeout:g}",
        "new_headers": [], "removed_headers": [],
        "oauth_client_id": (server.oauth_config or {}).get("client_id", ""),
        "oauth_scopes": " ".join((server.oauth_config or {}).get("scopes", [])),
        "oauth_authorization_server": (server.oauth_config or {}).get("authorization_server", ""),
        **{f"oauth_{k}": (server.oauth_config or {}).get(k, "") for k in ENDPOINTS},
    }


def _oauth_data(server: McpServer | None) -> dict | None:
    """The OAuth settings typed into the form (the secret is write-only: blank keeps it)."""
    out = {}
    for name in ("client_id", "authorization_server", *ENDPOINTS):
        if text(f"oauth_{name}").strip():
            out[name] = text(f"oauth_{name}").strip()
    if text("oauth_scopes").strip():
        out["scopes"] = text("oauth_scopes").replace(",", " ").split()
    if text("oauth_client_secret"):
        out["client_secret"] = text("oauth_client_secret")
    if not out and (server is None or not server.oauth_config):
        return None
    return out


def _data(server: McpServer | None) -> dict:
    """The form as the dict the JSON API takes."""
    data = {
        "name": text("name"), "url": text("url"), "auth_type": text("auth_type"),
        "allow_on_all_virtual_keys": checked("allow_on_all_virtual_keys"), "enabled": checked("enabled"),
    }
    for name in ("connect_timeout", "read_timeout"):
        if text(name).strip():
            data[name] = number_or_raw(text(name))
    new_headers, _ = _new_header_rows()
    if server is None:
        if new_headers:
            data["headers"] = new_headers
    else:
        # Values are write-only: an existing header keeps its value unless a new one is typed,
        # or it is ticked for removal.
        patch = {}
        removed = set(request.form.getlist("remove_header"))
        for name in server.header_names():
            if name in removed:
                patch[name] = None
            elif text(f"header_value:{name}").strip():
                patch[name] = text(f"header_value:{name}")
        patch.update(new_headers)
        if patch:
            data["headers"] = patch
    samples = {name.strip(): value for name, value in zip_longest(
        request.form.getlist("sample_name"), request.form.getlist("sample_value"), fillvalue="")
        if name.strip() or value}
    if samples:
        data["sample_headers"] = samples
    if data["auth_type"] in OAUTH_TYPES:
        oauth = _oauth_data(server)
        if oauth is not None:
            data["oauth"] = oauth
    keys = text("per_user_header_keys")
    if keys.strip():
        data["per_user_header_keys"] = comma_list(keys)
    elif server is not None and data["auth_type"] == "per_user_headers":
        data["per_user_header_keys"] = []  # cleared on purpose: the ops layer says why that fails
    return data


@bp.route("/servers/new", methods=["GET", "POST"])
@admin_required
def server_new():
    context = {"server": None, "auth_types": AUTH_TYPES}
    if request.method == "GET":
        values = {"auth_type": "none", "enabled": True, "new_headers": [], "removed_headers": [],
                  "connect_timeout": "5", "read_timeout": "30"}
        return render_template("web/server_form.html", values=values, errors={}, **context)
    try:
        server = ops.create_server(_data(None))
        db.session.commit()
    except OpError as e:
        return form_error("web/server_form.html", e, values=_values_from_form(), **context)
    if server.enabled and server.auth_type in OAUTH_TYPES:
        # the creating admin goes through the upstream's consent once: the tools are read with
        # that token (per_user_oauth: it becomes the admin's own credential)
        flash(f"MCP server {server.name} created. Connect it at the upstream to read its tools.", "success")
        return done(_oauth_connect_url(server.id))
    flash(f"MCP server {server.name} created.", "success")
    return done(url_for("web.servers"))


def _oauth_connect_url(server_id: int) -> str:
    from ..upstream_oauth.connect import start_admin

    return url_for("web.connect", flow_id=start_admin(ops.get_server(server_id), g.user))


@bp.post("/servers/<id:server_id>/oauth-connect")
@admin_required
def server_oauth_connect(server_id: int):
    """Connect (or reconnect) the server's shared account (oauth), or the admin's own
    (per_user_oauth): on to the upstream through /connect/<flow_id>."""
    server = ops.get_server(server_id)
    if server.auth_type not in OAUTH_TYPES:
        flash("This server does not use OAuth.", "error")
        return done(url_for("web.server_edit", server_id=server_id))
    return redirect(_oauth_connect_url(server_id), 303)


@bp.post("/servers/<id:server_id>/oauth-disconnect")
@admin_required
def server_oauth_disconnect(server_id: int):
    """Disconnect the shared account of an oauth server (deleted here, revoked at the upstream)."""
    from ..upstream_oauth.connect import disconnect_shared

    server = ops.get_server(server_id)
    if server.auth_type != "oauth":
        flash("Only an oauth server has a shared account to disconnect.", "error")
    elif disconnect_shared(server):
        flash("Shared account disconnected: calls now answer that an admin must connect it.", "success")
    else:
        flash("The shared account was not connected.", "success")
    return done(url_for("web.server_edit", server_id=server_id))


def oauth_status(server: McpServer) -> dict | None:
    """For the server page: who connected the shared account, when, its expiry and status."""
    if server.auth_type != "oauth":
        return None
    row = db.session.get(UpstreamOAuth, server.id)
    if row is None or row.token is None:
        return {"connected": False}
    who = db.session.get(User, row.connected_by_id) if row.connected_by_id else None
    return {"connected": True, "status": row.status, "by": who.email if who else "(a deleted user)",
            "at": row.connected_at, "expires_at": row.expires_at, "scopes": row.scopes or []}


@bp.route("/servers/<id:server_id>", methods=["GET", "POST"])
@admin_required
def server_edit(server_id: int):
    server = ops.get_server(server_id)
    context = {"server": server, "auth_types": AUTH_TYPES, "oauth_status": oauth_status(server)}
    if request.method == "GET":
        return render_template("web/server_form.html", values=_values_from_server(server), errors={}, **context)
    try:
        result = ops.update_server(server, _data(server))
        db.session.commit()
    except OpError as e:
        server = ops.get_server(server_id)  # reloaded after the rollback
        return form_error("web/server_form.html", e, values=_values_from_form(),
                          server=server, auth_types=AUTH_TYPES)
    flash(f"MCP server {result.server.name} saved." if result.changed else "Nothing changed.", "success")
    return done(url_for("web.servers"))


@bp.post("/servers/<id:server_id>/refresh-tools")
@admin_required
def server_refresh_tools(server_id: int):
    server = ops.get_server(server_id)
    error = None
    try:
        ops.refresh_tools(server, g.get("user"))
        db.session.commit()
    except OpError as e:
        db.session.rollback()
        server, error = ops.get_server(server_id), e.message
    if is_htmx():
        return render_template("_partials/server_tools.html", server=server, tools_error=error), (422 if error else 200)
    flash(error or f"{len(server.tools)} tools discovered.", "error" if error else "success")
    return done(url_for("web.server_edit", server_id=server_id))


@bp.post("/servers/<id:server_id>/delete")
@admin_required
def server_delete(server_id: int):
    server = ops.get_server(server_id)
    name = server.name
    after = ops.delete_server(server)
    db.session.commit()
    after()
    flash(f"MCP server {name} deleted.", "success")
    return done(url_for("web.servers"))
