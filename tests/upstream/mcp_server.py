"""A real upstream MCP server (the official `mcp` SDK) for the tests and benchmarks.

usage: python mcp_server.py --port N [--stateful] [--require-header K=V ...] [--name NAME]
Stateless JSON by default; --stateful gives sessions and SSE answers (progress notifications).
"""
import argparse
import logging
import base64

import anyio
import uvicorn
from pydantic import BaseModel

from mcp import UrlElicitationRequiredError
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import (AudioContent, CallToolResult, ElicitRequestURLParams, EmbeddedResource, ResourceLink,
                       TextContent, TextResourceContents)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
WAV = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()


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

    return mcp


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
    a = p.parse_args()
    mcp = build(a.name)
    app = (mcp.streamable_http_app() if a.stateful
           else mcp.streamable_http_app(stateless_http=True, json_response=True))
    if a.require_header:
        app = RequireHeader(app, a.require_header)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # no per-session chatter
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
