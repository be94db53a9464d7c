"""The upstream that the MCP conformance suite reaches *through* Portcullis (/mcp/<name>).

Everything the active server scenarios expect, named and shaped as they expect it: tools
(content of every type, logging, progress, errors, sampling, elicitation), resources (text,
binary, a template, a watched resource to subscribe to), prompts (arguments, an embedded
resource, an image), completion and logging/setLevel. Stateful with SSE answers, so that
progress, log messages and server-to-client requests exist to be relayed.
usage: python fixture_server.py --port N
"""
import argparse
import base64
import json
import logging

import anyio
import uvicorn

from pydantic import BaseModel, Field

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.types import (AudioContent, CallToolResult, Completion, EmbeddedResource, EmptyResult, ImageContent,
                       SamplingMessage, SetLevelRequestParams, SubscribeRequestParams, TextContent,
                       TextResourceContents, UnsubscribeRequestParams)

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
    """Asks the client for an LLM completion."""
    try:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100,
            related_request_id=ctx.request_id)  # on the call's stream: Portcullis relays it to the caller
        return f"LLM response: {getattr(result.content, 'text', 'No response')}"
    except Exception as e:
        return f"Sampling not supported or error: {e}"


class UserResponse(BaseModel):
    response: str = Field(description="User's response")


@mcp.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the client for input (form mode)."""
    try:
        result = await ctx.elicit(message=message, schema=UserResponse)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"User response: action={result.action}, content={content}"
    except Exception as e:
        return f"Elicitation not supported or error: {e}"


class Defaults(BaseModel):
    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(default="active", description="User status",
                        json_schema_extra={"enum": ["active", "inactive", "pending"]})
    verified: bool = Field(default=True, description="Verification status")


@mcp.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Elicitation with a default for every primitive type (SEP-1034)."""
    try:
        result = await ctx.elicit(message="Please provide user information", schema=Defaults)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation result: action={result.action}, content={content}"
    except Exception as e:
        return f"Elicitation not supported or error: {e}"


class Enums(BaseModel):
    untitledSingle: str = Field(description="Simple enum without titles",
                                json_schema_extra={"enum": ["active", "inactive", "pending"]})
    titledSingle: str = Field(description="Enum with titled options (oneOf)", json_schema_extra={"oneOf": [
        {"const": "low", "title": "Low Priority"}, {"const": "medium", "title": "Medium Priority"},
        {"const": "high", "title": "High Priority"}]})
    untitledMulti: list[str] = Field(description="Multi-select without titles", json_schema_extra={
        "items": {"type": "string", "enum": ["read", "write", "execute"]}})
    titledMulti: list[str] = Field(description="Multi-select with titled options", json_schema_extra={
        "items": {"anyOf": [{"const": "feature", "title": "New Feature"}, {"const": "bug", "title": "Bug Fix"},
                            {"const": "docs", "title": "Documentation"}]}})
    legacyEnum: str = Field(description="Legacy enum with enumNames", json_schema_extra={
        "enum": ["small", "medium", "large"], "enumNames": ["Small Size", "Medium Size", "Large Size"]})


@mcp.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Elicitation with every enum schema variation (SEP-1330)."""
    try:
        result = await ctx.elicit(message="Please select values using different enum schema types", schema=Enums)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation completed: action={result.action}, content={content}"
    except Exception as e:
        return f"Elicitation not supported or error: {e}"


@mcp.resource("test://static-text")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary")
def static_binary() -> bytes:
    """A static binary resource (a PNG)."""
    return base64.b64decode(PNG)


@mcp.resource("test://template/{id}/data")
def template(id: str) -> str:
    """A resource template with a parameter."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource("test://watched-resource")
def watched() -> str:
    """A resource to subscribe to."""
    return "Watched resource content"


@mcp.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A prompt without arguments."""
    return [UserMessage(role="user", content=TextContent(type="text", text="This is a simple prompt for testing."))]


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with two required arguments."""
    return [UserMessage(role="user", content=TextContent(
        type="text", text=f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt with an embedded resource."""
    return [
        UserMessage(role="user", content=EmbeddedResource(type="resource", resource=TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."))),
        UserMessage(role="user", content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with an image."""
    return [
        UserMessage(role="user", content=ImageContent(type="image", data=PNG, mime_type="image/png")),
        UserMessage(role="user", content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@mcp.completion()
async def complete(ref, argument, context) -> Completion:
    return Completion(values=[], total=0, has_more=False)


async def acknowledge(ctx, params) -> EmptyResult:
    return EmptyResult()


# No public MCPServer API for these in mcp 2.3.0: the low-level server's.
mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, acknowledge)
mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, acknowledge)
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, acknowledge)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    logging.getLogger("mcp").setLevel(logging.WARNING)  # no per-session chatter
    uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
