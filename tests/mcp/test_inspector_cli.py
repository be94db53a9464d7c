"""The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, Node 22; `make install-test`
puts it in ~/.cache/portcullis-inspector) lists and reads resources and prompts through
Portcullis, with a virtual key, against real upstreams (the `mcp` SDK's MCPServer): on
/mcp/<name> under the upstream's own names, on the aggregated /mcp namespaced, and nothing of a
server the key is not granted. Each call is one run of the CLI, as a user would type it; its
JSON output is parsed. The runs of a test go four at a time (each is mostly Node starting up)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.mcp import UPSTREAM_KEY, add_key, add_server
from tests.upstream.mcp_server import BLOB, PNG

INSPECTOR_DIR = Path(os.environ.get("PORTCULLIS_INSPECTOR_DIR", Path.home() / ".cache" / "portcullis-inspector"))
NODE_BIN = INSPECTOR_DIR / "node_modules" / ".bin"
INSPECTOR = NODE_BIN / "mcp-inspector"  # the launcher behind `npx @modelcontextprotocol/inspector`


@pytest.fixture(scope="module")
def inspector_env(tmp_path_factory):
    if not (NODE_BIN / "node").exists() or not INSPECTOR.exists():
        pytest.fail(f"the MCP Inspector is not installed in {INSPECTOR_DIR}: run `make install-test`")
    home = tmp_path_factory.mktemp("inspector-home")  # its catalog and storage, not the user's ~
    return {**os.environ, "HOME": str(home), "PATH": f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def inspect(inspector_env):
    """``inspect(url, key, calls)``: each call is ``(method, *options)``; runs the CLI once per
    call, returns each run's parsed output: ``{"result": ...}`` (exit 0) or ``{"error": ...}``."""

    def run(url, key, call):
        method, *options = call
        argv = [str(NODE_BIN / "node"), str(INSPECTOR), "--cli", url, "--transport", "http",
                "--header", f"Authorization: Bearer {key}", "--format", "json", "--method", method, *options]
        done = subprocess.run(argv, env=inspector_env, capture_output=True, text=True, timeout=60)
        out = json.loads(done.stdout or done.stderr)
        assert ("result" in out) == (done.returncode == 0), (call, done.returncode, out)
        return out

    def inspect(url, key, calls):
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda call: run(url, key, call), calls))

    return inspect


@pytest.fixture
def two_servers(app, upstreams):
    """alpha: stateless JSON; beta: stateful SSE behind a header that Portcullis adds."""
    alpha = add_server(app, "alpha", upstreams["alpha"])
    beta = add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})
    return alpha, beta


def texts(prompt):
    return [m["content"]["text"] for m in prompt["messages"] if m["content"]["type"] == "text"]


def test_one_server_under_its_own_names(app, live_server, two_servers, inspect):
    _, beta = two_servers
    _, key = add_key(app, {beta: ["echo"]})  # the tool allowlist governs tools, not resources or prompts
    tools, resources, templates, text, blob, item, prompts, greet, show = [out["result"] for out in inspect(
        live_server + "/mcp/beta", key, [
            ("tools/list",),
            ("resources/list",),
            ("resources/templates/list",),
            ("resources/read", "--uri", "test://static/text"),
            ("resources/read", "--uri", "test://static/blob"),
            ("resources/read", "--uri", "test://item/7"),
            ("prompts/list",),
            ("prompts/get", "--prompt-name", "greet", "--prompt-args", "who=Ada"),
            ("prompts/get", "--prompt-name", "show", "--prompt-args", "uri=test://static/text"),
        ])]
    assert [t["name"] for t in tools["tools"]] == ["echo"]
    listed = {r["uri"]: r for r in resources["resources"]}
    assert set(listed) == {"test://static/text", "test://static/blob"}
    assert listed["test://static/blob"]["mimeType"] == "application/octet-stream"
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["test://item/{id}"]
    assert text["contents"] == [{"uri": "test://static/text", "mimeType": "text/plain", "text": "text of beta"}]
    (content,) = blob["contents"]
    assert content["uri"] == "test://static/blob" and base64.b64decode(content["blob"]) == BLOB  # byte for byte
    assert item["contents"][0]["text"] == '{"server": "beta", "id": "7"}'
    listed = {p["name"]: p for p in prompts["prompts"]}
    assert set(listed) == {"greet", "show"}
    assert [(a["name"], a.get("required")) for a in listed["greet"]["arguments"]] == [("who", True)]
    assert texts(greet) == ["beta greets Ada"]
    embedded, image = (m["content"] for m in show["messages"])
    assert embedded["resource"] == {"uri": "test://static/text", "mimeType": "text/plain", "text": "embedded"}
    assert (image["type"], image["mimeType"], base64.b64decode(image["data"])) == ("image", "image/png", PNG)


def test_the_aggregated_endpoint_namespaces(app, live_server, two_servers, inspect):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: ["echo"], beta: ["add"]})
    tools, resources, templates, text, blob, item, prompts, greet, show = [out["result"] for out in inspect(
        live_server + "/mcp", key, [
            ("tools/list",),
            ("resources/list",),
            ("resources/templates/list",),
            ("resources/read", "--uri", "portcullis://beta/test://static/text"),
            ("resources/read", "--uri", "portcullis://alpha/test://static/blob"),
            ("resources/read", "--uri", "portcullis://alpha/test://item/9"),
            ("prompts/list",),
            ("prompts/get", "--prompt-name", "beta__greet", "--prompt-args", "who=Bo"),
            ("prompts/get", "--prompt-name", "alpha__show", "--prompt-args", "uri=test://static/text"),
        ])]
    assert {"alpha__echo", "beta__add"} <= {t["name"] for t in tools["tools"]}
    assert {t["name"] for t in tools["tools"]} - {"alpha__echo", "beta__add"} <= {
        "portcullis__list_services", "portcullis__request_key"}  # Portcullis's own tools
    assert {r["uri"] for r in resources["resources"]} == {
        f"portcullis://{s}/test://static/{r}" for s in ("alpha", "beta") for r in ("text", "blob")}
    assert sorted(t["uriTemplate"] for t in templates["resourceTemplates"]) == [
        "portcullis://alpha/test://item/{id}", "portcullis://beta/test://item/{id}"]
    assert text["contents"] == [{"uri": "portcullis://beta/test://static/text", "mimeType": "text/plain",
                                 "text": "text of beta"}]
    (content,) = blob["contents"]
    assert content["uri"] == "portcullis://alpha/test://static/blob" and base64.b64decode(content["blob"]) == BLOB
    assert item["contents"][0] == {"uri": "portcullis://alpha/test://item/9", "mimeType": "application/json",
                                   "text": '{"server": "alpha", "id": "9"}'}
    assert {p["name"] for p in prompts["prompts"]} == {"alpha__greet", "alpha__show", "beta__greet", "beta__show"}
    assert texts(greet) == ["beta greets Bo"]
    embedded, image = (m["content"] for m in show["messages"])
    assert embedded["resource"]["uri"] == "portcullis://alpha/test://static/text"  # readable here, as listed
    assert image["mimeType"] == "image/png" and base64.b64decode(image["data"]) == PNG


def test_a_key_sees_nothing_of_a_server_it_is_not_granted(app, live_server, two_servers, inspect):
    alpha, _ = two_servers
    _, key = add_key(app, {alpha: None})
    *lists, text, blob, greet = inspect(live_server + "/mcp", key, [
        ("tools/list",),
        ("resources/list",),
        ("resources/templates/list",),
        ("prompts/list",),
        ("resources/read", "--uri", "portcullis://beta/test://static/text"),
        ("resources/read", "--uri", "test://static/blob"),
        ("prompts/get", "--prompt-name", "beta__greet", "--prompt-args", "who=Eve"),
    ])
    tools, resources, templates, prompts = (out["result"] for out in lists)
    assert {t["name"] for t in tools["tools"]} >= {"alpha__echo", "alpha__add"}
    assert {r["uri"] for r in resources["resources"]} == {"portcullis://alpha/test://static/text",
                                                          "portcullis://alpha/test://static/blob"}
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["portcullis://alpha/test://item/{id}"]
    assert {p["name"] for p in prompts["prompts"]} == {"alpha__greet", "alpha__show"}
    assert "beta" not in json.dumps(lists)  # not a name, URI, description or cursor
    assert text == {"error": {"code": "error", "message": "Resource not found: portcullis://beta/test://static/text"}}
    assert blob == {"error": {"code": "error", "message": "Resource not found: test://static/blob"}}
    assert greet == {"error": {"code": "error", "message": "Unknown prompt: beta__greet"}}  # like no such prompt
    (own,) = inspect(live_server + "/mcp/beta", key, [("resources/list",)])  # refused like no such server
    assert own["error"]["status"] == 404 and '"no such MCP server"' in own["error"]["message"], own
