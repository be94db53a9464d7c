"""Portcullis's MCP endpoint (/mcp, /mcp/<server-name>) and its client side towards upstream
MCP servers. The endpoint is mounted by ``app.mcp.wsgi.mount`` in create_app()."""
