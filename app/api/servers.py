from flask import g, jsonify

from ..extensions import db
from ..models import McpServer
from ..ops import servers as ops
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
    return jsonify(server.to_dict()), 201


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
