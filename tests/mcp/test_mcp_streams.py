"""GET /mcp: the agent session's server-to-client stream (app/mcp/streams.py), over real HTTP
against a real stateful upstream (the SDK's MCPServer): resource updates sent on the upstream's
own GET stream reach the subscribing agent session only (wrapped URI on /mcp, the upstream's on
/mcp/<name>); Last-Event-ID replays; DELETE ends the stream; list_changed and log messages
(filtered by the session's level) arrive; the per-agent upstream session is in the database,
encrypted."""
from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from app.extensions import db
from app.mcp import streams
from app.models import McpSessionEvent, McpUpstreamSession
from tests.support.mcp import UPSTREAM_KEY, add_key, add_server, raw_dump, start_upstream, stop

ACCEPT = "application/json, text/event-stream"


@pytest.fixture
def beta(app, upstreams):
    return add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})


@pytest.fixture(scope="module")
def resumable_url():
    """A stateful upstream that gives SSE event ids and replays after Last-Event-ID."""
    proc, url = start_upstream("--name", "gamma", "--stateful", "--event-store")
    yield url
    stop(proc)


class Agent:
    """One agent session over real HTTP; ``listen()`` holds its GET stream in a thread."""

    def __init__(self, url: str, key: str, capabilities: dict | None = None):
        self.url, self._id = url, 0
        self.headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT}
        r = httpx.post(url, headers=self.headers, timeout=10, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": capabilities or {},
                "clientInfo": {"name": "t", "version": "1"}}})
        assert r.status_code == 200, r.text
        self.headers.update({"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"})
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.events: queue.Queue = queue.Queue()
        self.ids: list[str] = []
        self.thread = None
        self.status = None
        self.opened = threading.Event()

    @property
    def session(self) -> str:
        return self.headers["Mcp-Session-Id"]

    def post(self, message: dict) -> httpx.Response:
        return httpx.post(self.url, headers=self.headers, json=message, timeout=20)

    def call(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        r = self.post({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params or {}})
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("text/event-stream"):
            return [e for e in _parse(r.text.splitlines())][-1][1]
        return r.json()

    def listen(self, last_event_id: str | None = None) -> "Agent":
        headers = {**self.headers, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.http = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self.opened.clear()

        def run():
            try:
                with self.http.stream("GET", self.url, headers=headers) as r:
                    self.status = r.status_code
                    self.opened.set()
                    for event_id, message in _parse(r.iter_lines()):
                        if event_id is not None:
                            self.ids.append(event_id)
                        if message is not None:
                            self.events.put(message)
            except (httpx.HTTPError, RuntimeError, OSError):
                pass
            finally:
                self.opened.set()
                self.events.put(None)  # the stream ended

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.opened.wait(10)
        return self

    def hang_up(self) -> None:
        """The agent goes away without DELETE (its connection closes)."""
        self.http.close()
        self.thread.join(timeout=10)
        while not self.events.empty():
            self.events.get()

    def next(self, timeout: float = 10.0):
        return self.events.get(timeout=timeout)

    def end(self) -> None:
        assert httpx.delete(self.url, headers=self.headers, timeout=10).status_code == 204
        if self.thread is not None:
            self.thread.join(timeout=10)
            assert not self.thread.is_alive()


def _parse(lines):
    """(id, message) of each SSE event (message None for the priming event)."""
    data, event_id = [], None
    for line in lines:
        if line == "":
            if data or event_id is not None:
                text = "\n".join(data)
                yield event_id, json.loads(text) if text else None
            data, event_id = [], None
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("id:"):
            event_id = line[3:].strip()


def _updated_until(agent: Agent, caller: Agent, tool: str, uri: str, expect: str) -> dict:
    """Ask the upstream to announce an update until it arrives on ``agent``'s stream (the
    upstream's GET stream is held by a pump that may still be connecting)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        caller.call("tools/call", {"name": tool, "arguments": {"uri": uri}})
        try:
            message = agent.next(timeout=0.5)
        except queue.Empty:
            continue
        assert message == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": expect}}
        return message
    raise AssertionError("no notifications/resources/updated on the GET stream")


@pytest.mark.parametrize("path,uri,tool", [("/mcp", "portcullis://beta/test://static/text", "beta__publish"),
                                           ("/mcp/beta", "test://static/text", "publish")])
def test_resource_updates_reach_the_subscribing_session_only(app, live_server, beta, path, uri, tool):
    _, key = add_key(app, {beta: None})
    one, other = Agent(live_server + path, key).listen(), Agent(live_server + path, key).listen()
    assert one.status == 200 and other.status == 200
    assert one.call("resources/subscribe", {"uri": uri})["result"] == {}
    _updated_until(one, other, tool, "test://static/text", uri)  # caused by the other session's call
    with pytest.raises(queue.Empty):  # the other session did not subscribe: nothing for it
        other.next(timeout=1.0)
    with app.app_context():  # the per-agent upstream session is stored, encrypted
        row = db.session.query(McpUpstreamSession).filter_by(agent_session_id=one.session).one()
        upstream_id = row.upstream_session_id
        assert upstream_id and row.server_id == beta
    assert upstream_id not in raw_dump(app)
    one.end()
    other.end()


def test_last_event_id_replays_what_came_after_it(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key)
    with app.app_context():
        first = streams.publish(agent.session, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        second = streams.publish(agent.session, {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"})
        third = streams.publish(agent.session, {"jsonrpc": "2.0", "method": "notifications/resources/list_changed"})
        raw = db.session.execute(db.text("SELECT payload FROM mcp_session_events")).scalars().all()
    assert raw and all("list_changed" not in p for p in raw)  # the payloads are encrypted
    agent.listen(str(first))
    assert agent.next()["method"] == "notifications/prompts/list_changed"
    assert agent.next()["method"] == "notifications/resources/list_changed"
    assert agent.ids[-2:] == [str(second), str(third)]
    with pytest.raises(queue.Empty):
        agent.next(timeout=0.5)
    # without Last-Event-ID a stream starts now; what is published meanwhile arrives live
    agent.end()
    later = Agent(live_server + "/mcp", key).listen()
    with app.app_context():
        streams.publish(later.session, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert later.next()["method"] == "notifications/tools/list_changed"
    with app.app_context():
        streams.publish(agent.session, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    with pytest.raises(queue.Empty):  # another session's event
        later.next(timeout=0.5)
    later.end()


def test_delete_ends_the_stream_and_its_upstream_session(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp/beta", key).listen()
    assert agent.call("resources/subscribe", {"uri": "test://static/text"})["result"] == {}
    _updated_until(agent, agent, "publish", "test://static/text", "test://static/text")
    assert httpx.delete(agent.url, headers=agent.headers, timeout=10).status_code == 204
    assert agent.next() is None  # the stream ended
    agent.thread.join(timeout=10)
    r = httpx.get(agent.url, headers={**agent.headers, "Accept": "text/event-stream"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == -32001
    deadline = time.monotonic() + 10
    while streams.pumps.count() and time.monotonic() < deadline:  # its pump stops too
        time.sleep(0.05)
    assert streams.pumps.count() == 0


def test_list_changed_and_log_messages_from_the_upstream_stream(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key).listen()
    assert agent.call("logging/setLevel", {"level": "info"})["result"] == {}  # an upstream session of its own
    deadline, got = time.monotonic() + 20, []
    while time.monotonic() < deadline and not got:
        agent.call("tools/call", {"name": "beta__announce", "arguments": {}})
        try:
            got.append(agent.next(timeout=0.5))
        except queue.Empty:
            continue
    got.append(agent.next())
    assert got[0] == {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}
    assert got[1]["method"] == "notifications/message" and got[1]["params"]["level"] == "warning"
    with pytest.raises(queue.Empty):  # the debug message is below the session's level
        agent.next(timeout=0.5)
    agent.end()


def test_get_needs_a_session_of_the_caller(app, live_server, beta):
    _, key = add_key(app, {beta: None})
    _, other_key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key)
    get = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    assert httpx.get(live_server + "/mcp", headers=get, timeout=10).status_code == 400  # no session id
    other = {**get, "Authorization": f"Bearer {other_key}", "Mcp-Session-Id": agent.session}
    assert httpx.get(live_server + "/mcp", headers=other, timeout=10).status_code == 404  # not its session
    with httpx.stream("GET", live_server + "/mcp", headers={**get, "Mcp-Session-Id": agent.session},
                      timeout=10) as r:  # its own session: the stream opens
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    bad = httpx.get(live_server + "/mcp", headers={**agent.headers, "Accept": "application/json"}, timeout=10)
    assert bad.status_code == 406
    bad = httpx.get(live_server + "/mcp", headers={**agent.headers, "Accept": "text/event-stream",
                                                   "Last-Event-ID": "x1"}, timeout=10)
    assert bad.status_code == 400
    assert httpx.get(live_server + "/mcp", headers={"Accept": "text/event-stream"}, timeout=10).status_code == 401
    agent.end()


def test_the_sweeper_trims_old_events(app, beta):
    from datetime import timedelta

    from app.models.base import utcnow
    from app.sweep import sweep

    _, key = add_key(app, {beta: None})
    with app.app_context():
        from app.models import McpSession
        db.session.add(McpSession(id="s" * 64, principal="anonymous", protocol_version="2025-11-25"))
        db.session.commit()
        streams.publish("s" * 64, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        keep = streams.publish("s" * 64, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        db.session.query(McpSessionEvent).filter(McpSessionEvent.id != keep).update(
            {"created_at": utcnow() - timedelta(seconds=app.config["PORTCULLIS_STREAM_RETENTION_SECONDS"] + 5)})
        db.session.commit()
        assert sweep(app).events == 1
        assert [e.id for e in db.session.query(McpSessionEvent)] == [keep]

        # a session ended longer ago than the retention goes, with its events; a recent end stays
        db.session.add(McpSession(id="r" * 64, principal="anonymous", protocol_version="2025-11-25",
                                  ended_at=utcnow()))
        db.session.query(McpSession).filter(McpSession.id == "s" * 64).update(
            {"ended_at": utcnow() - timedelta(seconds=app.config["PORTCULLIS_STREAM_RETENTION_SECONDS"] + 5)})
        db.session.commit()
        report = sweep(app)
        assert (report.events, report.mcp_sessions) == (1, 1)
        assert [s.id for s in db.session.query(McpSession)] == ["r" * 64]
        assert db.session.query(McpSessionEvent).count() == 0


def test_a_revoked_key_loses_its_stream(app, live_server, beta, monkeypatch):
    from app.models import VirtualKey

    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 0.3)
    key_id, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key).listen()
    with pytest.raises(queue.Empty):  # kept alive while the key is good
        agent.next(timeout=1.0)
    with app.app_context():
        db.session.get(VirtualKey, key_id).active = False
        db.session.commit()
    assert agent.next(timeout=10) is None  # the stream ended at its next keep-alive


def test_a_request_sent_outside_a_call_is_relayed_and_answered(app, live_server, beta):
    """elicitation/create on the upstream's GET stream (after the call that caused it ended)
    reaches the agent's stream under a relay id; the agent's answer POST reaches the upstream."""
    _, key = add_key(app, {beta: None})
    agent = Agent(live_server + "/mcp", key, {"elicitation": {"form": {}}}).listen()
    assert agent.call("resources/subscribe", {"uri": "portcullis://beta/test://static/text"})["result"] == {}
    deadline, asked = time.monotonic() + 20, None
    while asked is None and time.monotonic() < deadline:  # until the pump holds the upstream's stream
        agent.call("tools/call", {"name": "beta__ask_later", "arguments": {}})
        try:
            asked = agent.next(timeout=1.0)
        except queue.Empty:
            continue
    assert asked["method"] == "elicitation/create" and asked["id"].startswith("portcullis-relay:")
    assert asked["params"]["message"] == "Later?"
    r = agent.post({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"answer": "Eve"}}})
    assert r.status_code == 202
    deadline, answers = time.monotonic() + 10, []
    while "accept:Eve" not in answers and time.monotonic() < deadline:
        answers = agent.call("tools/call", {"name": "beta__later_answers", "arguments": {}})["result"][
            "structuredContent"]["result"]
        time.sleep(0.1)
    assert "accept:Eve" in answers
    agent.end()


def test_the_pump_resumes_the_upstream_stream_with_last_event_id(app, live_server, resumable_url, monkeypatch):
    """Events the upstream sent while no pump held its stream arrive when the agent comes back:
    the pump resumes with the upstream's last event id (stored per upstream session)."""
    monkeypatch.setitem(app.config, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 0.3)
    gamma = add_server(app, "gamma", resumable_url)
    _, key = add_key(app, {gamma: None})
    agent = Agent(live_server + "/mcp/gamma", key).listen()
    assert agent.call("resources/subscribe", {"uri": "test://static/text"})["result"] == {}
    _updated_until(agent, agent, "publish", "test://static/text", "test://static/text")
    with app.app_context():
        assert db.session.query(McpUpstreamSession).one().last_event_id  # the upstream's position
    seen = agent.ids[-1]
    while True:  # drain the updates of the retries
        try:
            agent.next(timeout=0.5)
        except queue.Empty:
            break
    agent.hang_up()
    deadline = time.monotonic() + 10
    while streams.pumps.count() and time.monotonic() < deadline:  # the pump stops with the stream
        time.sleep(0.05)
    assert streams.pumps.count() == 0
    # no one holds the upstream's stream now: its update is kept by the upstream only
    assert agent.call("tools/call", {"name": "publish", "arguments": {"uri": "test://item/7"}})["result"][
        "structuredContent"]["result"] == 0  # (nobody subscribed to that URI: a marker call)
    assert agent.call("resources/subscribe", {"uri": "test://item/7"})["result"] == {}
    assert agent.call("tools/call", {"name": "publish", "arguments": {"uri": "test://item/7"}})["result"][
        "structuredContent"]["result"] == 1
    agent.listen(agent.ids[-1] if agent.ids else seen)
    message = agent.next(timeout=15)
    assert message == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                       "params": {"uri": "test://item/7"}}
    agent.end()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_sdk_client_hears_updates_on_its_get_stream(app, live_server, beta, anyio_backend):
    """The real `mcp` client opens GET /mcp by itself after initialize; an update for its
    subscription arrives there (not on a call's answer: the upstream sends it on its own GET
    stream, caused here by another session's call)."""
    import anyio

    from tests.support.mcp import client

    _, key = add_key(app, {beta: None})
    heard: list = []

    async def on_message(message):
        if getattr(message, "method", None) == "notifications/resources/updated":
            heard.append(str(message.params.uri))

    other = Agent(live_server + "/mcp", key)
    http, c = client(live_server + "/mcp", key, message_handler=on_message)
    async with http, c:
        await c.subscribe_resource("portcullis://beta/test://static/text")
        with anyio.fail_after(20):
            while not heard:  # until the pump holds the upstream's stream
                await anyio.to_thread.run_sync(lambda: other.call(
                    "tools/call", {"name": "beta__publish", "arguments": {"uri": "test://static/text"}}))
                await anyio.sleep(0.3)
    assert heard[0] == "portcullis://beta/test://static/text"
    other.end()
