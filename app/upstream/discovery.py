"""Discovering an upstream's tools (initialize + tools/list) and keeping the stored list fresh.

Agents are served the stored list, so tools/list never fans out to upstreams on the hot path;
a list older than PORTCULLIS_TOOLS_REFRESH_SECONDS is refreshed in the background when an agent
lists tools, and on demand (page, API, `flask refresh-tools`). Which headers reach the upstream
is the caller's business (app/credentials decides); by default the server's shared headers."""
from __future__ import annotations

import threading
from datetime import timedelta

from flask import current_app

from ..extensions import db
from ..models import McpServer
from ..models.base import utcnow
from .client import Endpoint, UpstreamError

_refreshing: set[int] = set()
_refreshing_lock = threading.Lock()


def list_tools(server: McpServer, headers: tuple[tuple[str, str], ...] | None = None) -> list[dict]:
    """The upstream's tools reached with these headers (default: the server's shared ones);
    raises UpstreamError (a message safe to show) when unreachable or refused. Nothing here
    keeps or logs the headers."""
    if headers is None:
        headers = tuple(sorted((server.shared_headers or {}).items()))
    ep = Endpoint(server.id or 0, server.name, server.url, headers, server.connect_timeout or 5.0,
                  server.read_timeout or 30.0)
    return current_app.extensions["mcp_client"].list_tools(ep)


def refresh(server: McpServer, headers: tuple[tuple[str, str], ...] | None = None) -> list[dict]:
    """Discover and store the server's tools and capabilities."""
    if headers is None:
        headers = tuple(sorted((server.shared_headers or {}).items()))
    ep = Endpoint(server.id or 0, server.name, server.url, headers, server.connect_timeout or 5.0,
                  server.read_timeout or 30.0)
    server.tools, server.capabilities = current_app.extensions["mcp_client"].discover(ep)
    server.tools_refreshed_at = utcnow()
    return server.tools


def refresh_stale(servers) -> None:
    """Start a background refresh of each of these servers (snapshot views) whose stored list
    is older than PORTCULLIS_TOOLS_REFRESH_SECONDS."""
    interval = current_app.config["PORTCULLIS_TOOLS_REFRESH_SECONDS"]
    if interval <= 0:
        return
    cutoff = utcnow() - timedelta(seconds=interval)
    for server in servers:
        if server.tools_refreshed_at is None or server.tools_refreshed_at < cutoff:
            _start_refresh(server.id)


def refresh_now(server_id: int) -> None:
    """Re-discover this server's tools in the background (it said its list changed)."""
    if current_app.config["PORTCULLIS_TOOLS_REFRESH_SECONDS"] > 0:
        _start_refresh(server_id)


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
