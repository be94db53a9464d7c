"""The background tool refresh (a list_changed, a stale list) survives its server being
deleted meanwhile: the thread ends quietly instead of dying on an UPDATE of a gone row."""
from __future__ import annotations

import threading

from sqlalchemy import delete

from app.extensions import db
from app.models import McpServer
from app.upstream import discovery
from tests.support.mcp import add_server


def test_a_server_deleted_during_its_background_refresh(app, faulty, monkeypatch):
    url, _ = faulty
    server_id = add_server(app, "fleeting", url + "/ok")
    real_refresh, died = discovery.refresh, []

    def refresh_then_deleted_elsewhere(server, *args, **kwargs):
        real_refresh(server, *args, **kwargs)
        with db.engine.begin() as other:  # another request deletes it before this one commits
            other.execute(delete(McpServer).where(McpServer.id == server_id))

    monkeypatch.setattr(discovery, "refresh", refresh_then_deleted_elsewhere)
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    started = []

    class Recorded(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(threading, "Thread", Recorded)
    monkeypatch.setitem(app.config, "PORTCULLIS_TOOLS_REFRESH_SECONDS", 60)
    with app.test_request_context():
        discovery.refresh_now(server_id)
    (thread,) = started
    thread.join(10)
    assert not thread.is_alive() and died == []
    with app.app_context():
        assert db.session.get(McpServer, server_id) is None
