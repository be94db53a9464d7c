"""Discovering an upstream's tools (initialize + tools/list) and keeping the stored list fresh.

Agents are served the stored list, so tools/list never fans out to upstreams on the hot path;
a list older than PORTCULLIS_TOOLS_REFRESH_SECONDS is refreshed in the background when an agent
lists tools, and on demand (page, API, `flask refresh-tools`)."""
from __future__ import annotations

import threading
from datetime import timedelta

from flask import current_app

from ..extensions import db
from ..models import McpServer
from ..models.base import utcnow
from .client import Endpoint, UpstreamError

# Types whose tools can be discovered with the server's own configuration. The per-user and
# OAuth types need a person's credential first.
DISCOVERABLE = ("none", "headers")

_refreshing: set[int] = set()
_refreshing_lock = threading.Lock()


def discover(server: McpServer) -> list[dict]:
    """The upstream's tools; raises UpstreamError (a message safe to show) when unreachable."""
    ep = Endpoint(server.id or 0, server.name, server.url, tuple(sorted((server.shared_headers or {}).items())),
                  server.connect_timeout or 5.0, server.read_timeout or 30.0)
    return current_app.extensions["mcp_client"].list_tools(ep)


def upstream_headers(shared: dict, per_user_keys, values: dict) -> tuple[tuple[str, str], ...]:
    """The headers sent for one person: the shared ones, except any named like a per-user key
    (compared case-insensitively; per-user values always win), plus that person's values."""
    keys = {k.lower() for k in per_user_keys}
    out = {name: v for name, v in (shared or {}).items() if name.lower() not in keys}
    out.update(values)
    return tuple(sorted(out.items()))


def discover_with(server: McpServer, values: dict) -> list[dict]:
    """The upstream's tools reached with exactly these per-user header values (samples or a
    member's submission). Nothing here keeps or logs the values."""
    ep = Endpoint(server.id or 0, server.name, server.url,
                  upstream_headers(server.shared_headers, server.per_user_header_keys or (), values),
                  server.connect_timeout or 5.0, server.read_timeout or 30.0)
    return current_app.extensions["mcp_client"].list_tools(ep)


def refresh_with(server: McpServer, values: dict) -> list[dict]:
    server.tools = discover_with(server, values)
    server.tools_refreshed_at = utcnow()
    return server.tools


def refresh(server: McpServer) -> list[dict]:
    server.tools = discover(server)
    server.tools_refreshed_at = utcnow()
    return server.tools


def refresh_stale(caller, scope) -> None:
    """Start a background refresh of each stale, discoverable server the caller can see."""
    interval = current_app.config["PORTCULLIS_TOOLS_REFRESH_SECONDS"]
    if interval <= 0:
        return
    cutoff = utcnow() - timedelta(seconds=interval)
    for sid in caller.allowlist:
        server = caller.snapshot.servers[sid]
        if scope is not None and server.id != scope.id:
            continue
        if server.auth_type in DISCOVERABLE and (server.tools_refreshed_at is None or server.tools_refreshed_at < cutoff):
            _start_refresh(server.id)


def _start_refresh(server_id: int) -> None:
    with _refreshing_lock:
        if server_id in _refreshing:
            return
        _refreshing.add(server_id)
    app = current_app._get_current_object()

    def run():
        try:
            with app.app_context():
                server = db.session.get(McpServer, server_id)
                if server is not None:
                    try:
                        refresh(server)
                        db.session.commit()
                    except UpstreamError as e:
                        db.session.rollback()
                        app.logger.warning("tool refresh failed: %s", e)
        finally:
            with _refreshing_lock:
                _refreshing.discard(server_id)

    threading.Thread(target=run, daemon=True, name=f"refresh-tools-{server_id}").start()
