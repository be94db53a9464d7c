"""A real upstream MCP server (the official `mcp` SDK) for the tests and benchmarks.

usage: python mcp_server.py --port N [--stateful] [--require-header K=V ...] [--name NAME]
Stateless JSON by default; --stateful gives sessions and SSE answers (progress notifications).
"""
import argparse
import asyncio
import logging
import base64

from typing import Annotated

import anyio
import uvicorn
from pydantic import BaseModel

from mcp import UrlElicitationRequiredError
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (AudioContent, CallToolResult, Completion, CreateMessageRequest, CreateMessageRequestParams,
                       CreateMessageResult, ElicitRequest, ElicitRequestFormParams, ElicitRequestURLParams, ElicitResult, EmbeddedResource,
                       EmptyResult, ImageContent, ListRootsRequest, ListRootsResult, PromptListChangedNotification,
                       PromptReference, ResourceUpdatedNotification, ResourceUpdatedNotificationParams,
                       ToolListChangedNotification, ResourceLink, SamplingMessage, SetLevelRequestParams,
                       SubscribeRequestParams, TextContent, TextResourceContents, UnsubscribeRequestParams)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
WAV = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
BLOB = bytes(range(256)) * 3 + b"\x00\xff\r\n"  # every byte value, for byte-for-byte checks


class Weather(BaseModel):
    city: str
    temp_c: float


def build(name: str) -> MCPServer:
    mcp = MCPServer(name, version="0.1.0")

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def pixel() -> Image:
        """A 1x1 PNG."""
        return Image(data=PNG, format="png")

    @mcp.tool()
    def media() -> CallToolResult:
        """Audio, a resource link and an embedded resource in one result."""
        return CallToolResult(content=[
            AudioContent(type="audio", data=WAV, mime_type="audio/wav"),
            ResourceLink(type="resource_link", uri="test://doc/1", name="doc-1", mime_type="text/plain"),
            EmbeddedResource(type="resource", resource=TextResourceContents(
                uri="test://doc/2", mime_type="text/plain", text="embedded text")),
        ])

    @mcp.tool()
    def weather(city: str) -> Weather:
        """Structured weather."""
        return Weather(city=city, temp_c=21.5)

    @mcp.tool()
    def with_meta() -> CallToolResult:
        """A result with _meta."""
        return CallToolResult(content=[TextContent(type="text", text="ok")], _meta={"trace": "abc"})

    @mcp.tool()
    def fail() -> str:
        """A tool error."""
        raise ToolError("bad input")

    @mcp.tool()
    async def slow(steps: int, ctx: Context, delay: float = 0.0) -> str:
        """Report progress steps, sleeping between them."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}")
            await anyio.sleep(delay)
        return "done"

    @mcp.tool()
    async def gate(path: str, ctx: Context, timeout: float = 20.0) -> str:
        """Report progress, then wait until a file exists at path (the client creates it when the
        progress reaches it): proves that progress is relayed while the tool still runs."""
        await ctx.report_progress(1, 2, "waiting")
        with anyio.move_on_after(timeout):
            while not await anyio.Path(path).exists():
                await anyio.sleep(0.01)
            await ctx.report_progress(2, 2, "opened")
            return "opened"
        return "timed out"

    @mcp.tool()
    async def chatty(ctx: Context) -> str:
        """Logs at info and at warning while it runs."""
        await ctx.info("an info line")
        await ctx.warning("a warning line")
        return "said"

    @mcp.tool()
    def needs_auth() -> str:
        """Answers -32042."""
        raise UrlElicitationRequiredError([ElicitRequestURLParams(message="Log in", url="http://127.0.0.1/auth",
                                                                  elicitation_id="e1")])

    @mcp.tool()
    async def headers(ctx: Context) -> dict[str, str]:
        """The x-*, authorization and cookie request headers the server saw."""
        return {k: v for k, v in (ctx.headers or {}).items() if k.startswith("x-") or k in ("authorization", "cookie")}

    # -- resources, prompts, completion: each named after the server, so that tests can tell
    # servers apart on the aggregated endpoint
    @mcp.resource("test://static/text", mime_type="text/plain")
    def static_text() -> str:
        """A text resource."""
        return f"text of {name}"

    @mcp.resource("test://static/blob", mime_type="application/octet-stream")
    def static_blob() -> bytes:
        """A binary resource: every byte value."""
        return BLOB

    @mcp.resource("test://item/{id}", mime_type="application/json")
    def item(id: str) -> str:
        """A templated resource."""
        return f'{{"server": "{name}", "id": "{id}"}}'

    @mcp.prompt()
    def greet(who: str) -> str:
        """A prompt with an argument."""
        return f"{name} greets {who}"

    @mcp.prompt()
    def show(uri: str) -> list[UserMessage]:
        """A prompt with an embedded resource and an image."""
        return [UserMessage(role="user", content=EmbeddedResource(type="resource", resource=TextResourceContents(
                    uri=uri, mime_type="text/plain", text="embedded"))),
                UserMessage(role="user", content=ImageContent(type="image", data=base64.b64encode(PNG).decode(),
                                                              mime_type="image/png"))]

    @mcp.completion()
    async def complete(ref, argument, context) -> Completion:
        kind = "prompt" if isinstance(ref, PromptReference) else "resource"
        return Completion(values=[f"{name}:{kind}:{argument.value}"], total=1, has_more=False)

    levels: list[str] = []

    async def set_level(ctx, params) -> EmptyResult:
        levels.append(params.level)
        return EmptyResult()

    async def acknowledge(ctx, params) -> EmptyResult:
        return EmptyResult()

    subscribers: dict[str, dict] = {}  # uri -> {session id: the session subscribed to it}

    def session_of(ctx):
        return ctx.request.headers.get("mcp-session-id") if ctx.request is not None else id(ctx.session)

    async def subscribe(ctx, params) -> EmptyResult:
        subscribers.setdefault(str(params.uri), {})[session_of(ctx)] = ctx.session
        return EmptyResult()

    async def unsubscribe(ctx, params) -> EmptyResult:
        subscribers.get(str(params.uri), {}).pop(session_of(ctx), None)
        return EmptyResult()

    class Answer(BaseModel):
        answer: str

    @mcp.tool()
    async def sample(prompt: str, ctx: Context) -> str:
        """Asks the client's LLM (sampling/createMessage)."""
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=50,
            related_request_id=ctx.request_id)  # on this call's stream (the GET stream is not relayed)
        return f"{result.model}:{getattr(result.content, 'text', '')}"

    @mcp.tool()
    async def ask(ctx: Context) -> str:
        """Asks the client's user (elicitation/create, form mode)."""
        r = await ctx.elicit(message="Name?", schema=Answer)
        return f"{r.action}:{r.data.answer if r.action == 'accept' else ''}"

    @mcp.tool()
    async def ask_twice(ctx: Context) -> str:
        """Asks the client's user twice in one call (elicitation/create, form mode)."""
        first = await ctx.elicit(message="First name?", schema=Answer)
        second = await ctx.elicit(message="Last name?", schema=Answer)
        return f"{first.data.answer if first.action == 'accept' else '-'} {second.data.answer if second.action == 'accept' else '-'}"

    @mcp.tool()
    async def ask_url(ctx: Context) -> str:
        """Sends the client's user to a URL (elicitation/create, URL mode)."""
        return (await ctx.elicit_url(message="Open", url="http://127.0.0.1/x", elicitation_id="e2")).action

    @mcp.tool()
    async def roots(ctx: Context) -> list[str]:
        """The client's roots (roots/list)."""
        result = await ctx.session.send_request(  # on this call's stream (the GET stream is not relayed)
            ListRootsRequest(), ListRootsResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id))
        return [str(r.uri) for r in result.roots]

    @mcp.tool()
    async def sample_progress(ctx: Context) -> list[str]:
        """Asks the client's LLM with a progress token; returns the progress the client reported."""
        seen: list[str] = []

        async def on_progress(progress, total, message):
            seen.append(f"{progress:g}/{total:g} {message}")

        await ctx.session.send_request(
            CreateMessageRequest(params=CreateMessageRequestParams(
                messages=[SamplingMessage(role="user", content=TextContent(type="text", text="long"))], max_tokens=5)),
            CreateMessageResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            progress_callback=on_progress)
        return seen

    @mcp.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Says a resource was updated, on this call's stream."""
        await ctx.session.send_notification(ResourceUpdatedNotification(
            params=ResourceUpdatedNotificationParams(uri=uri)), related_request_id=ctx.request_id)
        return "touched"

    @mcp.tool()
    async def publish(uri: str) -> int:
        """Says a resource was updated to every session subscribed to it, on their GET streams
        (not on this call's); returns to how many."""
        sessions = list(subscribers.get(uri, {}).values())
        for session in sessions:
            try:
                await session.send_resource_updated(uri)
            except Exception:  # noqa: BLE001 - a session gone meanwhile
                pass
        return len(sessions)

    @mcp.tool()
    async def broadcast(uri: str, ctx: Context) -> int:
        """Says a resource was updated and the prompt list changed, in both eras: on the
        subscriptions/listen streams (2026-07-28), and on the GET streams of the sessions
        subscribed to it (initialize era); returns to how many of those."""
        await ctx.notify_resource_updated(uri)
        await ctx.notify_prompts_changed()
        sessions = list(subscribers.get(uri, {}).values())
        for session in sessions:
            try:
                await session.send_resource_updated(uri)
                await session.send_prompt_list_changed()
            except Exception:  # noqa: BLE001 - a session gone meanwhile
                pass
        return len(sessions)

    @mcp.tool()
    def listeners() -> int:
        """How many subscriptions/listen streams are open on this server."""
        return len(mcp._subscriptions._listeners)

    later: list[str] = []

    @mcp.tool()
    async def ask_later(ctx: Context) -> str:
        """Asks the client's user after this call has ended (elicitation/create on the GET stream);
        ``later_answers`` tells what came back."""
        session = ctx.session

        async def ask():
            try:
                r = await session.send_request(ElicitRequest(params=ElicitRequestFormParams(
                    message="Later?", requested_schema={"type": "object", "properties": {
                        "answer": {"type": "string"}}, "required": ["answer"]})), ElicitResult)
                later.append(f"{r.action}:{(r.content or {}).get('answer', '')}")
            except Exception as e:  # noqa: BLE001 - reported by later_answers
                later.append(f"error:{type(e).__name__}")
        asyncio.get_running_loop().create_task(ask())
        return "asked"

    @mcp.tool()
    def later_answers() -> list[str]:
        """What the client answered to ask_later, so far."""
        return later

    @mcp.tool()
    async def announce(ctx: Context) -> str:
        """Says the prompt list changed and logs a warning, on the GET stream of this call's session."""
        await ctx.session.send_prompt_list_changed()
        await ctx.session.send_log_message(level="warning", data="standalone warning")
        await ctx.session.send_log_message(level="debug", data="standalone debug")
        return "announced"

    @mcp.tool()
    async def change(ctx: Context) -> str:
        """Says its tool and prompt lists changed, on this call's stream."""
        await ctx.session.send_notification(ToolListChangedNotification(), related_request_id=ctx.request_id)
        await ctx.session.send_notification(PromptListChangedNotification(), related_request_id=ctx.request_id)
        return "changed"

    async def answer_of(ctx: Context) -> Elicit[Answer]:
        return Elicit("Name?", Answer)

    @mcp.tool()
    async def resolve_ask(answer: Annotated[Answer, Resolve(answer_of)]) -> str:
        """Asks the client's user through a resolver: inputRequests on 2026-07-28, elicitation/create before."""
        return f"resolved:{answer.answer}"

    @mcp.tool()
    def era(ctx: Context) -> str:
        """The protocol revision of this request."""
        return str(ctx.protocol_version)

    @mcp.tool()
    def log_levels() -> list[str]:
        """The log levels set on this server so far (logging/setLevel)."""
        return levels

    # No public MCPServer API for these in mcp 2.3.0: the low-level server's.
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    return mcp


class LegacyOnly:
    """ASGI wrapper: a server of the initialize era only, as SDKs before 2026-07-28 are: a
    request of 2026-07-28 (server/discover first) gets HTTP 404 with -32601."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"mcp-protocol-version") == b"2026-07-28":
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body":
                               b'{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"Method not found"}}'})
        await self.app(scope, receive, send)

class MemoryEventStore(EventStore):
    """Resumability (--event-store): every event kept, numbered; a GET with Last-Event-ID gets
    the events of that stream after it. One session per server in the tests that use it (the
    SDK names every session's GET stream alike)."""

    def __init__(self):
        self.events: list[tuple[str, str, object]] = []

    async def store_event(self, stream_id, message):
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        if not last_event_id.isdigit() or not 0 < int(last_event_id) <= len(self.events):
            return None
        stream = self.events[int(last_event_id) - 1][1]
        for event_id, stream_id, message in self.events[int(last_event_id):]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


class RequireHeader:
    """ASGI wrapper: 401 unless every required header has one of its accepted values
    (``--require-header K=V`` may repeat: several headers, or several accepted values of one)."""

    def __init__(self, app, specs):
        self.app, self.required = app, {}
        for spec in specs:
            name, value = spec.split("=", 1)
            self.required.setdefault(name.lower().encode(), set()).add(value.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not all(dict(scope["headers"]).get(name) in values
                                               for name, values in self.required.items()):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            return await send({"type": "http.response.body", "body": b"unauthorized"})
        await self.app(scope, receive, send)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="upstream-test")
    p.add_argument("--stateful", action="store_true")
    p.add_argument("--require-header", action="append")
    p.add_argument("--legacy-only", action="store_true")
    p.add_argument("--event-store", action="store_true", help="resumable streams (SSE event ids)")
    a = p.parse_args()
    mcp = build(a.name)
    app = (mcp.streamable_http_app(event_store=MemoryEventStore() if a.event_store else None) if a.stateful
           else mcp.streamable_http_app(stateless_http=True, json_response=True))
    if a.legacy_only:
        app = LegacyOnly(app)
    if a.require_header:
        app = RequireHeader(app, a.require_header)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # no per-session chatter
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
