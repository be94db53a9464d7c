"""Portcullis's MCP endpoint and its client side towards upstream MCP servers."""
from flask import Blueprint

bp = Blueprint("mcp", __name__)


@bp.route("/mcp", methods=["POST", "GET", "DELETE"], defaults={"server_name": None}, provide_automatic_options=False)
@bp.route("/mcp/<server_name>", methods=["POST", "GET", "DELETE"], provide_automatic_options=False)
def endpoint(server_name):
    from .gateway import handle

    return handle(server_name)
