"""Tool names as agents see them: ``<server>__<tool>`` on /mcp, plain on /mcp/<server>,
filtered by the caller's effective allowlist. Built from the stored (discovered) tool lists."""
from __future__ import annotations

from ..identity import Caller
from ..snapshot import ServerView

SEP = "__"


def visible(caller: Caller, scope: ServerView | None) -> list[dict]:
    servers = caller.snapshot.servers
    out = []
    for sid in sorted(caller.allowlist, key=lambda i: servers[i].name):
        server = servers[sid]
        if scope is not None and server.id != scope.id:
            continue
        allowed = caller.allowlist[sid]
        for tool in server.tools:
            if allowed is not None and tool.get("name") not in allowed:
                continue
            out.append(tool if scope is not None else {**tool, "name": server.name + SEP + tool["name"]})
    return out


def resolve(caller: Caller, scope: ServerView | None, name: str) -> tuple[ServerView, str] | None:
    """The server and upstream tool name for a tool name the agent used, or None when the
    caller may not call it (unknown, not granted or filtered: all look the same)."""
    if scope is not None:
        server, tool = scope, name
    else:
        server_name, sep, tool = name.partition(SEP)
        if not sep:
            return None
        server = caller.snapshot.by_name.get(server_name)
        if server is None:
            return None
    if server.id not in caller.allowlist:
        return None
    allowed = caller.allowlist[server.id]
    if (allowed is not None and tool not in allowed) or tool not in server.tool_names:
        return None
    return server, tool
