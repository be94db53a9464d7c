"""Resources, prompts, completion and logging/setLevel through /mcp, with the real `mcp` SDK
client against real upstreams (the SDK's MCPServer): on /mcp/<name> under the upstream's own
names, on the aggregated /mcp namespaced, and filtered by the caller's grants."""
from __future__ import annotations

import base64

import pytest
from mcp import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from app.mcp.catalog import _decode_cursor, _encode_cursor
from tests.support.mcp import UPSTREAM_KEY, Rpc, add_key, add_server, client
from tests.upstream.mcp_server import BLOB

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def two_servers(app, upstreams):
    alpha = add_server(app, "alpha", upstreams["alpha"])
    beta = add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": UPSTREAM_KEY})
    return alpha, beta


def text_of(result):
    return [m.content.text for m in result.messages if m.content.type == "text"]


async def test_one_server_keeps_the_upstream_names(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {beta: ["echo"]})  # a tool allowlist governs tools only
    http, c = client(live_server + "/mcp/beta", key)
    async with http, c:
        caps = c.server_capabilities
        assert caps.resources is not None and caps.resources.subscribe and caps.prompts is not None
        assert caps.completions is not None and caps.logging is not None

        resources = {r.uri: r for r in (await c.list_resources()).resources}
        assert {"test://static/text", "test://static/blob"} <= set(resources)
        assert resources["test://static/blob"].mime_type == "application/octet-stream"
        (text,) = (await c.read_resource("test://static/text")).contents
        assert (text.uri, text.text) == ("test://static/text", "text of beta")
        (blob,) = (await c.read_resource("test://static/blob")).contents
        assert base64.b64decode(blob.blob) == BLOB  # byte for byte
        (template,) = (await c.list_resource_templates()).resource_templates
        assert template.uri_template == "test://item/{id}"
        (item,) = (await c.read_resource("test://item/7")).contents
        assert item.text == '{"server": "beta", "id": "7"}'
        assert await c.subscribe_resource("test://static/text") is not None
        assert await c.unsubscribe_resource("test://static/text") is not None

        prompts = {p.name: p for p in (await c.list_prompts()).prompts}
        assert {"greet", "show"} <= set(prompts) and prompts["greet"].arguments[0].name == "who"
        assert text_of(await c.get_prompt("greet", {"who": "Ada"})) == ["beta greets Ada"]
        shown = (await c.get_prompt("show", {"uri": "test://static/text"})).messages
        assert shown[0].content.resource.uri == "test://static/text" and shown[0].content.resource.text == "embedded"
        assert shown[1].content.type == "image" and shown[1].content.mime_type == "image/png"

        done = await c.complete(PromptReference(type="ref/prompt", name="greet"), {"name": "who", "value": "A"})
        assert done.completion.values == ["beta:prompt:A"]
        done = await c.complete(ResourceTemplateReference(type="ref/resource", uri="test://item/{id}"),
                                {"name": "id", "value": "4"})
        assert done.completion.values == ["beta:resource:4"]
        with pytest.raises(MCPError) as e:
            await c.get_prompt("nosuch", {})
        assert e.value.message == "Unknown prompt: nosuch"  # the upstream's own error (code 0 in mcp 2.3.0), as it is


async def test_the_aggregated_endpoint_namespaces_prompts_and_uris(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None, beta: None})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        caps = c.server_capabilities
        assert caps.resources.subscribe and caps.prompts is not None and caps.completions is not None
        listed = await c.list_resources()
        uris = [r.uri for r in listed.resources]
        assert {"portcullis://alpha/test://static/text", "portcullis://beta/test://static/blob"} <= set(uris)
        assert listed.next_cursor is None  # neither upstream pages: one page holds both
        (text,) = (await c.read_resource("portcullis://beta/test://static/text")).contents
        assert (text.uri, text.text) == ("portcullis://beta/test://static/text", "text of beta")
        (blob,) = (await c.read_resource("portcullis://alpha/test://static/blob")).contents
        assert base64.b64decode(blob.blob) == BLOB
        templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
        assert templates == ["portcullis://alpha/test://item/{id}", "portcullis://beta/test://item/{id}"]
        (item,) = (await c.read_resource("portcullis://alpha/test://item/9")).contents
        assert item.text == '{"server": "alpha", "id": "9"}' and item.uri == "portcullis://alpha/test://item/9"

        names = [p.name for p in (await c.list_prompts()).prompts]
        assert {"alpha__greet", "alpha__show", "beta__greet", "beta__show"} <= set(names)
        assert text_of(await c.get_prompt("beta__greet", {"who": "Bo"})) == ["beta greets Bo"]
        shown = (await c.get_prompt("alpha__show", {"uri": "test://static/text"})).messages
        assert shown[0].content.resource.uri == "portcullis://alpha/test://static/text"  # readable here

        done = await c.complete(PromptReference(type="ref/prompt", name="alpha__greet"), {"name": "who", "value": "x"})
        assert done.completion.values == ["alpha:prompt:x"]
        done = await c.complete(ResourceTemplateReference(type="ref/resource", uri="portcullis://beta/test://item/{id}"),
                                {"name": "id", "value": "1"})
        assert done.completion.values == ["beta:resource:1"]
        assert await c.subscribe_resource("portcullis://beta/test://static/text") is not None


async def test_nothing_of_an_ungranted_server_leaks(app, live_server, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: ["echo"]})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        assert all(r.uri.startswith("portcullis://alpha/") for r in (await c.list_resources()).resources)
        assert all(t.uri_template.startswith("portcullis://alpha/")
                   for t in (await c.list_resource_templates()).resource_templates)
        assert all(p.name.startswith("alpha__") for p in (await c.list_prompts()).prompts)
        refusals = []
        for uri in ("portcullis://beta/test://static/text", "portcullis://nosuch/test://static/text",
                    "test://static/text", "portcullis://beta"):
            with pytest.raises(MCPError) as e:
                await c.read_resource(uri)
            refusals.append((e.value.code, e.value.message.replace(uri, "URI")))
            with pytest.raises(MCPError) as e:
                await c.subscribe_resource(uri)
            refusals.append((e.value.code, e.value.message.replace(uri, "URI")))
        assert set(refusals) == {(-32002, "Resource not found: URI")}
        for name in ("beta__greet", "nosuch__greet", "greet"):
            with pytest.raises(MCPError) as e:
                await c.get_prompt(name, {"who": "x"})
            assert (e.value.code, e.value.message) == (-32602, f"Unknown prompt: {name}")
            with pytest.raises(MCPError) as e:
                await c.complete(PromptReference(type="ref/prompt", name=name), {"name": "who", "value": "x"})
            assert e.value.code == -32602


def test_cursors_are_opaque_and_checked(app, client, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    assert _decode_cursor(_encode_cursor("beta", "c2")) == ("beta", "c2")
    for cursor in ("", "!!", "x" * 5000, _encode_cursor("beta", "c2"), _encode_cursor("nosuch", "1"), 7):
        r = rpc.call("prompts/list", {"cursor": cursor})
        assert r.json["error"] == {"code": -32602, "message": "invalid params: unknown cursor"}, cursor
    # a cursor for a granted server is passed on to that server, which judges it
    r = rpc.call("resources/list", {"cursor": _encode_cursor("alpha", "garbage")})
    assert r.status_code == 200 and "error" not in r.json or r.json["error"]["code"] != -32602


def test_set_level_reaches_the_upstreams(app, client, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None, beta: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    assert rpc.call("logging/setLevel", {"level": "warning"}).json["result"] == {}
    for server in ("alpha", "beta"):
        r = rpc.call("tools/call", {"name": f"{server}__log_levels", "arguments": {}}, {"Accept": "application/json"})
        assert "warning" in r.json["result"]["structuredContent"]["result"], server
    rpc = Rpc(client, key, "/mcp/beta")
    rpc.initialize()
    assert rpc.call("logging/setLevel", {"level": "critical"}).json["result"] == {}
    r = rpc.call("tools/call", {"name": "log_levels", "arguments": {}}, {"Accept": "application/json"})
    assert r.json["result"]["structuredContent"]["result"][-1] == "critical"


def test_bad_params_get_json_rpc_errors(app, client, two_servers):
    alpha, beta = two_servers
    _, key = add_key(app, {alpha: None})
    bad_values = (None, 5, "", "x" * 10_000, [], {}, {"type": "ref/prompt", "name": 5}, "portcullis://alpha/",
                  "portcullis://ALPHA/test://static/text", "portcullis://alpha__x/y")
    methods = ("resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/get", "completion/complete",
               "resources/list", "resources/templates/list", "prompts/list", "logging/setLevel")
    for path in ("/mcp", "/mcp/alpha"):
        rpc = Rpc(client, key, path)
        rpc.initialize()
        for method in methods:
            for field in ("uri", "name", "ref", "cursor", "level", "argument"):
                for value in bad_values:
                    r = rpc.call(method, {field: value}, {"Accept": "application/json"})
                    assert r.status_code == 200, (path, method, field, value, r.status_code)
                    body = r.json
                    assert "error" in body or "result" in body, (path, method, field, value)


def test_cursors_walk_the_servers_and_stay_stable(app, client, two_servers, faulty):
    """alpha, beta (one page each) and paged (two pages): the first page holds alpha's, beta's
    and paged's first prompts, its cursor continues at paged's second page, every time."""
    alpha, beta = two_servers
    url, _ = faulty
    paged = add_server(app, "paged", url + "/paged")
    _, key = add_key(app, {alpha: None, beta: None, paged: None})
    rpc = Rpc(client, key)
    rpc.initialize()
    first = rpc.call("prompts/list", {}, {"Accept": "application/json"}).json["result"]
    names = [p["name"] for p in first["prompts"]]
    assert names[-1] == "paged__p1" and {"alpha__greet", "beta__greet"} <= set(names)
    cursor = first["nextCursor"]
    assert "c2" not in cursor and "paged" not in cursor  # opaque
    for _ in range(2):  # stable: the same cursor gives the same page
        second = rpc.call("prompts/list", {"cursor": cursor}, {"Accept": "application/json"}).json["result"]
        assert second == {"prompts": [{"name": "paged__p2"}]}
    # a key without paged cannot use its cursor
    _, other = add_key(app, {alpha: None})
    rpc = Rpc(client, other)
    rpc.initialize()
    assert rpc.call("prompts/list", {"cursor": cursor}).json["error"]["code"] == -32602


def test_capabilities_follow_what_the_upstreams_announced(app, client, faulty):
    url, _ = faulty
    plain = add_server(app, "plain", url + "/ok")  # announces tools only
    _, key = add_key(app, {plain: None})
    for path in ("/mcp", "/mcp/plain"):
        rpc = Rpc(client, key, path)
        assert rpc.initialize()["capabilities"] == {"tools": {"listChanged": False}, "logging": {}}
    r = rpc.call("resources/list")
    assert r.json["error"]["code"] == -32601 and "offers no resources" in r.json["error"]["message"]
    assert rpc.call("prompts/get", {"name": "x"}).json["error"]["code"] == -32601
    rpc = Rpc(client, key)
    rpc.initialize()
    assert rpc.call("prompts/list").json["result"] == {"prompts": []}  # nothing to walk
    paged = add_server(app, "paged", url + "/paged")
    _, both = add_key(app, {plain: None, paged: None})
    assert Rpc(client, both).initialize()["capabilities"]["prompts"] == {"listChanged": False}
