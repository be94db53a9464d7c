"""Portcullis's own MCP endpoint for agents (/mcp, /mcp/<server-name>): mounted in front of
Flask's dispatch by ``app.mcp.wsgi.mount`` in create_app(). The client side towards upstream
MCP servers lives below, in app/upstream."""
