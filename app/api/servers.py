from flask import g, jsonify

from ..extensions import db
from ..models import McpServer
from ..models.servers import OAUTH_TYPES
from ..ops import servers as ops
from ..ops.errors import Conflict
from ..upstream_oauth import connect as upstream_oauth
from . import admin_only, body, bp, listing, page_params, search_term


@bp.get("/mcp-servers")
@admin_only
def list_servers():
    limit, offset = page_params()
    q = db.select(McpServer).order_by(McpServer.name)
    if term := search_term():
        q = q.where(McpServer.name.contains(term.lower(), autoescape=True))
    return listing("mcp_servers", q, limit, offset, McpServer.to_dict)


@bp.post("/mcp-servers")
@admin_only
def create_server():
    server = ops.create_server(body())
    db.session.commit()
    out = server.to_dict()
    if server.enabled and server.auth_type in OAUTH_TYPES:
        # the API cannot walk a browser through the upstream's consent: the answer says where the
        # admin goes next (the page's own flow); the tools are read with the token it stores
        out.update(upstream_oauth.connect_link(server, g.user))
    return jsonify(out), 201


@bp.get("/mcp-servers/<id:server_id>")
@admin_only
def get_server(server_id):
    return jsonify(ops.get_server(server_id).to_dict())


@bp.patch("/mcp-servers/<id:server_id>")
@admin_only
def update_server(server_id):
    result = ops.update_server(ops.get_server(server_id), body())
    db.session.commit()
    return jsonify(result.server.to_dict())


@bp.post("/mcp-servers/<id:server_id>/refresh-tools")
@admin_only
def refresh_server_tools(server_id):
    server = ops.refresh_tools(ops.get_server(server_id), g.get("user"))
    db.session.commit()
    return jsonify(server.to_dict())


@bp.delete("/mcp-servers/<id:server_id>")
@admin_only
def delete_server(server_id):
    after = ops.delete_server(ops.get_server(server_id))
    db.session.commit()
    after()
    return "", 204


@bp.post("/mcp-servers/<id:server_id>/oauth-connection")
@admin_only
def connect_server_oauth(server_id):
    """A link to connect (or reconnect) an OAuth server: its shared account (oauth) or the
    calling admin's own (per_user_oauth), opened in that admin's dashboard login."""
    server = ops.get_server(server_id)
    if server.auth_type not in OAUTH_TYPES:
        raise Conflict("this server does not use OAuth")
    return jsonify(upstream_oauth.connect_link(server, g.user))


@bp.delete("/mcp-servers/<id:server_id>/oauth-connection")
@admin_only
def disconnect_server_oauth(server_id):
    """Disconnect an oauth server's shared account (deleted here, then revoked at the upstream)."""
    server = ops.get_server(server_id)
    if server.auth_type != "oauth":
        raise Conflict("only an oauth server has a shared account to disconnect (per_user_oauth "
                       "connections are revoked from Sessions)")
    upstream_oauth.disconnect_shared(server)
    return "", 204
