"""Talking to upstream MCP servers as a client: the pooled Streamable HTTP client (client.py)
and tool discovery (discovery.py). Below everything that uses it: it knows servers and
endpoints, never callers, grants or credentials."""
