"""The benchmark's upstream: the mcp SDK's MCPServer with one `echo` tool, JSON answers,
and a counter of the requests it received (GET /count) to check one request per call."""
import argparse
import logging

import uvicorn
from mcp.server.mcpserver import MCPServer

COUNT = {"requests": 0}
mcp = MCPServer("bench-upstream", version="1.0")


@mcp.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


class Counted:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/count":
            body = str(COUNT["requests"]).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            return await send({"type": "http.response.body", "body": body})
        if scope["type"] == "http" and scope["method"] == "POST":
            COUNT["requests"] += 1
        await self.app(scope, receive, send)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    app = Counted(mcp.streamable_http_app(stateless_http=True, json_response=True))
    logging.getLogger("mcp").setLevel(logging.WARNING)  # no per-session chatter
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
