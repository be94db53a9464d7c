"""The auth-required answer as the real `mcp` SDK client sees it: -32042 when it declared
URL-mode elicitation, an isError tool result with _meta otherwise; then the retried call works."""
from __future__ import annotations

import pytest
from mcp import MCPError, UrlElicitationRequiredError

from app.extensions import db
from app.models import Credential
from tests.conftest import make_user
from tests.support.mcp import ALICE, add_key, client, make_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def _elicit(context, params):  # declaring the callback declares elicitation (form + url)
    raise AssertionError("Portcullis does not send elicitation/create")


async def test_sdk_client_with_url_elicitation_gets_32042(app, live_server, urls):
    sid = make_server(app, urls["one"])
    uid = make_user(app, "sdk@example.com")
    _, key = add_key(app, {sid: None}, owner_id=uid)
    http, c = client(live_server + "/mcp", key, elicitation_callback=_elicit)
    async with http, c:
        with pytest.raises(MCPError) as e:
            await c.call_tool("keyed__headers", {})
        assert e.value.code == -32042
        typed = UrlElicitationRequiredError.from_error(e.value.error)
        (elicitation,) = typed.elicitations
        assert elicitation.mode == "url" and elicitation.url.startswith(live_server.rstrip("/") + "/connect/") \
            or elicitation.url.startswith(app.config["PORTCULLIS_BASE_URL"] + "/connect/")
        assert elicitation.url.endswith(elicitation.elicitation_id)
        with app.app_context():
            db.session.add(Credential(auth_mode="user", user_id=uid, mcp_server_id=sid, values={"x-api-key": ALICE},
                                      header_keys=["x-api-key"]))
            db.session.commit()
        r = await c.call_tool("keyed__headers", {})
        assert not r.is_error and r.structured_content["x-api-key"] == ALICE


async def test_sdk_client_without_elicitation_gets_a_tool_result(app, live_server, urls):
    sid = make_server(app, urls["one"])
    _, key = add_key(app, {sid: None})
    http, c = client(live_server + "/mcp", key)
    async with http, c:
        r = await c.call_tool("keyed__headers", {})
        assert r.is_error
        meta = r.meta["portcullis/auth_required"]
        assert meta["kind"] == "headers" and meta["server"] == "keyed" and "#t=" in meta["submit_url"]
        assert meta["submit_url"] in r.content[0].text


async def test_a_2026_client_gets_the_url_as_an_input_request(app, live_server, urls):
    """MCP 2026-07-28 has no -32042: a client with URL-mode elicitation gets the URL as an
    inputRequests entry of the call's result; its retry (once the person connected) works. A
    retry without the credential ends with the auth-required tool result (asked once, never a
    loop); a client without elicitation gets that result at once."""
    from mcp.types import ElicitRequestURLParams, ElicitResult

    sid = make_server(app, urls["one"])
    uid = make_user(app, "sdk26@example.com")
    _, key = add_key(app, {sid: None}, owner_id=uid)
    asked = []

    async def connect(context, params):
        assert isinstance(params, ElicitRequestURLParams) and "/connect/" in params.url
        asked.append(params.url)
        if len(asked) == 2:  # the person connects their account at the URL
            with app.app_context():
                db.session.add(Credential(auth_mode="user", user_id=uid, mcp_server_id=sid,
                                          values={"x-api-key": ALICE}, header_keys=["x-api-key"]))
                db.session.commit()
        return ElicitResult(action="accept")

    http, c = client(live_server + "/mcp", key, mode="auto", elicitation_callback=connect)
    async with http, c:
        assert c.protocol_version == "2026-07-28"
        r = await c.call_tool("keyed__headers", {})  # asked, not connected: the tool result
        assert len(asked) == 1 and r.is_error and r.meta["portcullis/auth_required"]["server"] == "keyed"
        r = await c.call_tool("keyed__headers", {})  # asked, connected: the retry reaches the upstream
        assert len(asked) == 2 and not r.is_error and r.structured_content["x-api-key"] == ALICE
    _, other = add_key(app, {sid: None})
    http, c = client(live_server + "/mcp", other, mode="auto")
    async with http, c:
        r = await c.call_tool("keyed__headers", {})
        assert r.is_error and "#t=" in r.meta["portcullis/auth_required"]["submit_url"]
