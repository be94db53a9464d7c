"""The upstream that the MCP conformance suite reaches *through* Portcullis (/mcp/<name>).

Tools named and shaped as the conformance scenarios expect (server mode, tools only: Portcullis
aggregates tools, not resources or prompts). Stateful with SSE answers so that progress and
log notifications exist to be relayed.
usage: python fixture_server.py --port N
"""
import argparse
import logging

import anyio
import uvicorn

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import (AudioContent, CallToolResult, EmbeddedResource, ImageContent, SamplingMessage, TextContent,
                       TextResourceContents)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

mcp = MCPServer("portcullis-conformance-fixture", version="1.0.0")


def content(*items) -> CallToolResult:
    return CallToolResult(content=list(items))


@mcp.tool()
def test_simple_text() -> CallToolResult:
    """Answers one text block."""
    return content(TextContent(type="text", text="This is a simple text response for testing."))


@mcp.tool()
def test_image_content() -> CallToolResult:
    """Answers one PNG image."""
    return content(ImageContent(type="image", data=PNG, mime_type="image/png"))


@mcp.tool()
def test_audio_content() -> CallToolResult:
    """Answers one WAV clip."""
    return content(AudioContent(type="audio", data=WAV, mime_type="audio/wav"))


@mcp.tool()
def test_embedded_resource() -> CallToolResult:
    """Answers an embedded text resource."""
    return content(EmbeddedResource(type="resource", resource=TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content.")))


@mcp.tool()
def test_multiple_content_types() -> CallToolResult:
    """Answers text, an image and an embedded resource."""
    return content(
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test": "data", "value": 123}')),
    )


@mcp.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three log notifications while it runs."""
    for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(text)
        await anyio.sleep(0.05)
    return "Tool with logging executed successfully"


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50 and 100 of 100."""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        await anyio.sleep(0.05)
    meta = ctx.request_context.meta if ctx.request_context else None
    return str((meta or {}).get("progress_token", 0))


@mcp.tool()
def test_error_handling() -> str:
    """Always fails."""
    raise RuntimeError("This tool intentionally returns an error for testing")


@mcp.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client for an LLM completion (needs a back-channel Portcullis does not offer)."""
    try:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100)
        return f"LLM response: {getattr(result.content, 'text', 'No response')}"
    except Exception as e:
        return f"Sampling not supported or error: {e}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    logging.getLogger("mcp").setLevel(logging.WARNING)  # no per-session chatter
    uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
