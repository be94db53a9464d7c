"""OAuth towards upstream MCP servers, as their client: finding the upstream's authorization
server and registering with it (discovery.py, registration.py), the protocol itself through
Authlib's OAuth client (protocol.py), connecting a person or the shared account (connect.py),
and refreshing tokens once across every instance (refresh.py)."""
