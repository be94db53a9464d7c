"""Portcullis's own MCP tools (portcullis__list_services, portcullis__request_key) through the
real `mcp` SDK client on /mcp, and the issued keys used on /proxy right away."""
from __future__ import annotations

from datetime import timedelta

import pytest
from mcp import MCPError
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEvent, VirtualKey
from app.models.base import utcnow
from tests.support.mcp import add_server
from tests.support.proxy import add_proxy_key, add_service, naive_utc, seen_headers, set_key
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

pytestmark = pytest.mark.anyio
LIST, REQUEST = "portcullis__list_services", "portcullis__request_key"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def mcp_client(url: str, key: str | None):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"} if key else {})
    return http, Client(streamable_http_client(url, http_client=http))


@pytest.fixture
def services(app, echo):
    """echo (granted write), docs (granted read), other (not granted)."""
    return {name: add_service(app, name, f"{echo}/{name}", description=f"the {name} API")
            for name in ("echo", "docs", "other")}


@pytest.fixture
def parent(app, services, member_id):
    return add_proxy_key(app, {services["echo"]: "write", services["docs"]: "read"}, owner_id=member_id,
                         rate_limit_per_minute=100, name="agent")


def key_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(VirtualKey))


async def test_tools_are_listed_with_schemas_and_list_services(app, live_server, parent, upstreams):
    alpha = add_server(app, "alpha", upstreams["alpha"], allow_on_all_virtual_keys=True)
    http, c = mcp_client(live_server + "/mcp", parent[1])
    async with http, c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert "alpha__echo" in tools and {LIST, REQUEST} <= set(tools)  # beside the upstream tools
        schema = tools[REQUEST].input_schema
        assert schema["required"] == ["service_name"] and schema["properties"]["ttl_seconds"]["maximum"] == 86400
        assert set(tools[REQUEST].output_schema["required"]) >= {"key", "key_id", "expires_at", "proxy_url"}
        r = await c.call_tool(LIST, {})
        assert not r.is_error
        base = app.config["PORTCULLIS_BASE_URL"]
        assert r.structured_content == {"services": [
            {"name": "docs", "description": "the docs API", "scope": "read", "proxy_url": f"{base}/proxy/docs"},
            {"name": "echo", "description": "the echo API", "scope": "write", "proxy_url": f"{base}/proxy/echo"}]}
        assert "other" not in r.content[0].text and f"{base}/proxy/echo" in r.content[0].text
        assert (await c.call_tool(LIST, {"x": 1})).is_error

    http, c = mcp_client(live_server + "/mcp/alpha", parent[1])  # a single-server endpoint: upstream tools only
    async with http, c:
        assert not any(t.name.startswith("portcullis__") for t in (await c.list_tools()).tools)
        with pytest.raises(MCPError) as e:
            await c.call_tool(REQUEST, {"service_name": "echo"})
        assert e.value.code == -32602
    assert alpha


async def test_request_key_issues_a_working_key_for_one_service(app, client, live_server, parent, services,
                                                               admin_api, member_id):
    parent_id, parent_secret = parent
    http, c = mcp_client(live_server + "/mcp", parent_secret)
    async with http, c:
        r = await c.call_tool(REQUEST, {"service_name": "echo", "ttl_seconds": 600, "rate_limit": 2,
                                        "scope": "read"})
    assert not r.is_error, r.content[0].text
    issued = r.structured_content  # validated by the SDK against the tool's outputSchema
    secret = issued["key"]
    assert secret.startswith("vk_") and secret in r.content[0].text
    base = app.config["PORTCULLIS_BASE_URL"]
    assert {k: issued[k] for k in ("service", "scope", "rate_limit_per_minute", "proxy_url")} == {
        "service": "echo", "scope": "read", "rate_limit_per_minute": 2, "proxy_url": f"{base}/proxy/echo"}
    assert abs((naive_utc(issued["expires_at"]) - utcnow()).total_seconds() - 600) < 5

    # usable on the proxy right away, for that one service and scope, with its own identity
    h = {"X-Virtual-Key": secret}
    r = client.get("/proxy/echo/x", headers=h)
    assert r.status_code == 200
    seen = seen_headers(r.json)
    assert seen["x-portcullis-key-id"] == [str(issued["key_id"])]
    assert seen["x-portcullis-agent-id"] == [f"vk:{parent_id}"]
    assert secret not in r.get_data(as_text=True) and parent_secret not in r.get_data(as_text=True)
    assert client.post("/proxy/echo/x", headers=h).status_code == 403  # read only
    assert client.get("/proxy/docs/x", headers=h).status_code == 403  # the parent's other service: no
    assert client.get("/proxy/echo/x", headers=h).status_code == 200
    assert client.get("/proxy/echo/x", headers=h).status_code == 429  # its own limit of 2

    # listed by the API with its source, owner and agent; never with its secret
    listing = admin_api.get("/virtual-keys?source=mcp").get_json()
    assert listing["count"] == 1
    row = listing["virtual_keys"][0]
    assert row["id"] == issued["key_id"] and row["source"] == "mcp" and row["owner_id"] == member_id
    assert row["agent_id"] == f"vk:{parent_id}" and row["services"] == [{"service_id": services["echo"],
                                                                           "scope": "read"}]
    assert row["expires_at"] == issued["expires_at"] and row["mcp_servers"] == []
    assert secret not in str(listing) and secret[3:11] in row["key_prefix"]
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "virtual_key.create")
                                   .order_by(AuditEvent.id.desc())).first()
        assert (event.actor_type, event.actor_id, event.target_id) == ("virtual_key", parent_id, issued["key_id"])
        assert secret not in event.detail


async def test_request_key_defaults_follow_the_callers_limits(app, client, live_server, services, upstreams):
    add_server(app, "alpha", upstreams["alpha"], allow_on_all_virtual_keys=True)
    parent_id, parent = add_proxy_key(app, {services["echo"]: "write", services["docs"]: "read"},
                                      rate_limit_per_minute=30)
    http, c = mcp_client(live_server + "/mcp", parent)
    async with http, c:
        echo_key = (await c.call_tool(REQUEST, {"service_name": "echo"})).structured_content
        docs_key = (await c.call_tool(REQUEST, {"service_name": "docs"})).structured_content
    assert echo_key["scope"] == "write" and docs_key["scope"] == "read"  # the caller's scope
    assert echo_key["rate_limit_per_minute"] == 30  # default 60, never above the caller's own
    assert abs((naive_utc(echo_key["expires_at"]) - utcnow()).total_seconds() - 3600) < 5  # default TTL

    # the issued key sees no MCP server (not even allow-all ones), only Portcullis's tools
    http, c = mcp_client(live_server + "/mcp", echo_key["key"])
    async with http, c:
        assert {t.name for t in (await c.list_tools()).tools} == {LIST, REQUEST}
        r = await c.call_tool(LIST, {})
        assert [s["name"] for s in r.structured_content["services"]] == ["echo"]
        # it can issue keys in turn, never wider than itself
        r = await c.call_tool(REQUEST, {"service_name": "echo", "rate_limit": 31})
        assert r.is_error and "rate_limit" in r.content[0].text
        grandchild = (await c.call_tool(REQUEST, {"service_name": "echo", "ttl_seconds": 60})).structured_content
    assert client.get("/proxy/echo/x", headers={"X-Virtual-Key": grandchild["key"]}).status_code == 200

    # a caller that expires soon issues keys that expire with it
    set_key(app, parent_id, expires_at=utcnow() + timedelta(seconds=100))
    http, c = mcp_client(live_server + "/mcp", parent)
    async with http, c:
        short = (await c.call_tool(REQUEST, {"service_name": "echo"})).structured_content
        r = await c.call_tool(REQUEST, {"service_name": "echo", "ttl_seconds": 200})
    assert 90 < (naive_utc(short["expires_at"]) - utcnow()).total_seconds() <= 100
    assert r.is_error and "ttl_seconds must be at most" in r.content[0].text

    # revoking the caller stops every key it issued (and theirs)
    set_key(app, parent_id, active=False)
    for issued in (echo_key, grandchild, short):
        assert client.get("/proxy/echo/x", headers={"X-Virtual-Key": issued["key"]}).status_code == 401


@pytest.mark.parametrize("arguments, says", [
    ({}, "service_name is required"),
    ({"service_name": ""}, "service_name must be a non-empty string"),
    ({"service_name": 7}, "service_name must be a non-empty string"),
    ({"service_name": "nosuch"}, "no service named 'nosuch' is granted"),
    ({"service_name": "other"}, "no service named 'other' is granted"),  # exists, not granted: same answer
    ({"service_name": "echo", "ttl_seconds": 0}, "ttl_seconds must be an integer from 1 to 86400"),
    ({"service_name": "echo", "ttl_seconds": 86401}, "ttl_seconds must be an integer from 1 to 86400"),
    ({"service_name": "echo", "ttl_seconds": "60"}, "ttl_seconds must be an integer"),
    ({"service_name": "echo", "ttl_seconds": 1.5}, "ttl_seconds must be an integer"),
    ({"service_name": "echo", "ttl_seconds": True}, "ttl_seconds must be an integer"),
    ({"service_name": "echo", "rate_limit": 0}, "rate_limit must be an integer from 1 to 100"),
    ({"service_name": "echo", "rate_limit": 101}, "rate_limit must be an integer from 1 to 100"),
    ({"service_name": "echo", "rate_limit": "5"}, "rate_limit must be an integer"),
    ({"service_name": "echo", "scope": "admin"}, "scope must be read or write"),
    ({"service_name": "docs", "scope": "write"}, "scope write is wider than this key's grant for docs"),
    ({"service_name": "echo", "owner_id": 1}, "unknown argument(s): owner_id"),
])
async def test_request_key_refusals_are_tool_errors_and_issue_nothing(app, live_server, parent, arguments, says):
    before = key_count(app)
    http, c = mcp_client(live_server + "/mcp", parent[1])
    async with http, c:
        r = await c.call_tool(REQUEST, arguments)
    assert r.is_error and says in r.content[0].text, r.content[0].text
    assert r.structured_content is None
    assert key_count(app) == before


async def test_max_ttl_is_configurable(app, live_server, parent, monkeypatch):
    monkeypatch.setitem(app.config, "PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS", 600)
    http, c = mcp_client(live_server + "/mcp", parent[1])
    async with http, c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools[REQUEST].input_schema["properties"]["ttl_seconds"]["maximum"] == 600
        r = await c.call_tool(REQUEST, {"service_name": "echo", "ttl_seconds": 601})
        assert r.is_error and "from 1 to 600" in r.content[0].text
        r = await c.call_tool(REQUEST, {"service_name": "echo"})  # the default is capped too
        assert (naive_utc(r.structured_content["expires_at"]) - utcnow()).total_seconds() <= 600


async def test_anonymous_development_callers_get_no_native_tools(app, live_server, monkeypatch, upstreams):
    add_server(app, "alpha", upstreams["alpha"], allow_on_all_virtual_keys=True)
    monkeypatch.setitem(app.config, "PORTCULLIS_ENFORCE_AUTH", False)
    http, c = mcp_client(live_server + "/mcp", None)
    async with http, c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "alpha__echo" in names and not any(n.startswith("portcullis__") for n in names)
        with pytest.raises(MCPError) as e:
            await c.call_tool(LIST, {})
        assert e.value.code == -32602


def test_portcullis_is_a_reserved_server_name(admin_api):
    r = admin_api.post("/mcp-servers", json={"name": "portcullis", "url": "http://127.0.0.1:9/mcp"})
    assert r.status_code == 422 and "reserved" in r.get_json()["error"]["fields"]["name"]
