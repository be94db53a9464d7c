"""No input is a 500: what a client sends that the app cannot take is a clear 4xx and changes
nothing (ids beyond what the database holds, JSON nested deeper than anything real, header values
HTTP cannot carry, text no database stores). tests/core/test_fuzz.py looks for more of these at random."""
from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import select
from werkzeug.routing import IntegerConverter

from app import IdConverter
from app.extensions import db
from app.models import Credential, Flow, McpServer
from app.ops.fields import MAX_HEADER_VALUE, MAX_ID, MAX_JSON_DEPTH, MAX_QUERY, header_value_ok
from tests.conftest import PASSWORD
from tests.support.api import PREFIX, assert_error
from tests.support.mcp import SAMPLE, Rpc, add_key, agent, auth_required, creds, make_server, raw_dump
from tests.support.web import Web, csrf_in

# --- ids -----------------------------------------------------------------------------------

BAD_IDS = ["0", str(MAX_ID + 1), str(2**64), "9" * 38]


def id_rules(app):
    return [r for r in app.url_map.iter_rules() if any(isinstance(c, IntegerConverter) for c in r._converters.values())]


def test_every_id_route_takes_only_ids_the_database_holds(app):
    rules = id_rules(app)
    assert {r.endpoint.split(".")[0] for r in rules} == {"api", "web"}
    plain = [r.rule for r in rules if not all(isinstance(c, IdConverter) for c in r._converters.values()
                                              if isinstance(c, IntegerConverter))]
    assert plain == [], "use <id:...> for ids"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_out_of_range_is_404_on_every_route(app, client, admin_api, bad):
    """A 38-digit id overflowed the database driver (500); now no route matches, as for an unknown id."""
    users_before = admin_api.get("/users").get_json()
    for rule in id_rules(app):
        path = re.sub(r"<[^>]+>", bad, rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(path, method=method, headers={"Authorization": f"Bearer {admin_api.token}"})
            assert resp.status_code == 404, (method, path, resp.status_code)
            if path.startswith(PREFIX):
                assert resp.get_json()["error"]["code"] == "not_found", (method, path)
    assert admin_api.get("/users").get_json() == users_before


def test_the_largest_id_still_reaches_the_route(client, admin_api):
    assert client.get(f"/api/v1/users/{MAX_ID}").status_code == 401  # routed: the token is checked
    assert admin_api.get(f"/users/{MAX_ID}").status_code == 404


def test_the_document_says_which_ids_exist(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    params = [p for item in doc["paths"].values() for p in item.get("parameters", [])
              if p["in"] == "path" and p["schema"]["type"] == "integer"]
    assert params and all((p["schema"]["minimum"], p["schema"]["maximum"]) == (1, MAX_ID) for p in params)


# --- header values -------------------------------------------------------------------------

CANARY = "hv-canary-5e1f"
UNSENDABLE = ["café-" + CANARY, "☃" + CANARY, CANARY + "\x7f", " " + CANARY, CANARY + "\t", "a\r\n" + CANARY,
              CANARY + "\x00"]


def test_the_header_value_rule():
    for value in ["Bearer abc.def-ghi", "a\tb", "a   b", "!~", "x" * MAX_HEADER_VALUE]:
        assert header_value_ok(value), value
    for value in [*UNSENDABLE, "", " ", "x" * (MAX_HEADER_VALUE + 1), None, 42]:
        assert not header_value_ok(value), value


@pytest.mark.parametrize("value", UNSENDABLE)
def test_unsendable_header_values_are_refused_everywhere(app, client, urls, admin_api, member_api, member_id,
                                                        caplog, value):
    """Shared headers, sample values and a person's own values: a clear 4xx naming the header,
    before any upstream call; 'café' was a UnicodeEncodeError (500) in the per-user submission.
    The value is in no answer, no log line (debug included) and no row."""
    caplog.set_level(logging.DEBUG)
    shared = admin_api.post("/mcp-servers", json={"name": "shared", "url": urls["one"], "auth_type": "headers",
                                                  "headers": {"X-Api-Key": SAMPLE}})
    assert shared.status_code == 201, shared.get_json()
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    flow = f"/header-flows/{auth_required(rpc)['flow_id']}"
    before = stored(app)

    answers = [
        (admin_api.post("/mcp-servers", json={"name": "other", "url": urls["one"], "auth_type": "headers",
                                              "headers": {"X-Api-Key": value}}), 422, "headers"),
        (admin_api.patch(f"/mcp-servers/{shared.get_json()['id']}", json={"headers": {"X-Api-Key": value}}),
         422, "headers"),
        (admin_api.post("/mcp-servers", json={"name": "other", "url": urls["one"], "auth_type": "per_user_headers",
                                              "per_user_header_keys": ["X-Api-Key"],
                                              "sample_headers": {"x-api-key": value}}), 422, "sample_headers"),
        (member_api.put(flow, json={"headers": {"X-Api-Key": value}}), 400, "headers"),
    ]
    for resp, status, field in answers:
        err = assert_error(resp, status, fields={field})
        assert "x-api-key" in err["fields"][field].lower() and "printable ASCII" in err["fields"][field]
        assert CANARY not in resp.get_data(as_text=True)
    assert stored(app) == before and creds(app) == []
    assert CANARY not in caplog.text + raw_dump(app)


def stored(app) -> list:
    """The servers, credentials and flows rows as stored (encrypted values included)."""
    with app.app_context(), db.engine.connect() as conn:
        return [list(conn.execute(select(t).order_by(*t.primary_key))) for t in (
            McpServer.__table__, Credential.__table__, Flow.__table__)]


# --- deeply nested JSON --------------------------------------------------------------------

def nest(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


DEEP = [nest(5000), '{"a":' * 5000 + "1" + "}" * 5000, "[" * 100_000]


@pytest.mark.parametrize("body", DEEP, ids=["arrays", "objects", "unclosed"])
def test_deep_json_on_mcp_is_a_parse_error(app, client, body):
    """A few thousand levels were a RecursionError (500) in the decoder."""
    _, key = add_key(app, {})
    r = Rpc(client, key).raw(body)
    assert r.status_code == 400 and r.json["error"]["code"] == -32700, r.get_data(as_text=True)[:200]


def test_mcp_takes_json_up_to_the_depth_limit(app, client):
    """Deep enough to be past any real message, shallow enough for everything that walks it later."""
    rpc = Rpc(client, add_key(app, {})[1])
    ping = '{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": %s}}'
    r = rpc.raw(ping % nest(MAX_JSON_DEPTH - 2))
    assert r.status_code == 200 and r.json["result"] == {}, r.json
    r = rpc.raw(ping % nest(MAX_JSON_DEPTH - 1))
    assert r.status_code == 400 and r.json["error"] == {"code": -32700, "message": (
        f"parse error: the body is nested deeper than {MAX_JSON_DEPTH} levels")}


def test_deep_json_on_the_api_is_a_400(client, admin_api):
    users = admin_api.get("/users").get_json()
    auth = {"Authorization": f"Bearer {admin_api.token}", "Content-Type": "application/json"}
    for body in [*DEEP, '{"email": %s}' % nest(MAX_JSON_DEPTH)]:
        err = assert_error(client.post("/api/v1/users", data=body, headers=auth), 400, "bad_request")
        assert err["message"] in ("the request body is not valid JSON",
                                  f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"), err
    assert admin_api.get("/users").get_json() == users


# --- text no database stores ---------------------------------------------------------------

SURROGATE = '"a\\ud800b"'  # JSON for a string holding an unpaired surrogate


@pytest.mark.parametrize("path, body", [
    ("/users", '{"email": %s, "password": "a-long-password"}' % SURROGATE),
    ("/services", '{"name": "svc", "base_url": "http://127.0.0.1:9/", "secret": "s", "description": %s}' % SURROGATE),
    ("/virtual-keys", '{"name": %s}' % SURROGATE),
    ("/tokens", '{"email": %s, "password": "x"}' % SURROGATE),
])
def test_unpaired_surrogates_in_json_are_a_400(client, admin_api, path, body):
    """They were a UnicodeEncodeError (500) wherever the text reached the database."""
    users = admin_api.get("/users").get_json()
    resp = client.post(PREFIX + path, data=body, headers={"Authorization": f"Bearer {admin_api.token}",
                                                          "Content-Type": "application/json"})
    err = assert_error(resp, 400, "bad_request")
    assert "unpaired surrogate" in err["message"]
    assert admin_api.get("/users").get_json() == users and admin_api.get("/services").get_json()["total_count"] == 0


def test_unpaired_surrogates_on_mcp_are_a_parse_error_and_pairs_are_text(app, client):
    rpc = Rpc(client, add_key(app, {})[1])
    r = rpc.raw('{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": %s}}' % SURROGATE)
    assert r.status_code == 400 and r.json["error"]["code"] == -32700
    r = rpc.raw('{"jsonrpc": "2.0", "id": "\\ud83d\\ude00", "method": "ping"}')  # a pair: one emoji
    assert r.status_code == 200 and r.json["id"] == "\U0001F600"


@pytest.mark.parametrize("path", ["/users?q=a%00", "/mcp-servers?q=%00", "/virtual-keys?q=%00", "/services?q=%00",
                                  "/virtual-keys?source=%00", "/audit-events?action=login%00", "/sessions?q=%00",
                                  "/users?%00=1"])
def test_nul_in_a_query_parameter_is_a_400_naming_it(admin_api, path):
    """PostgreSQL refuses NUL in any comparison: these were 500s there."""
    err = assert_error(admin_api.get(path), 400, "bad_request")
    assert set(err["fields"]) == {path.split("?")[1].split("=")[0].replace("%00", "\x00")}


@pytest.mark.parametrize("path", ["/users", "/mcp-servers", "/virtual-keys", "/services", "/sessions"])
def test_a_search_longer_than_any_name_is_a_400(admin_api, path):
    """70 000 characters were a 500 on SQLite (LIKE or GLOB pattern too complex)."""
    assert admin_api.get(f"{path}?q={'x' * MAX_QUERY}").status_code == 200
    err = assert_error(admin_api.get(f"{path}?q={'x' * 70_000}"), 400, "bad_request", {"q"})
    assert str(MAX_QUERY) in err["fields"]["q"]


def test_nul_in_a_flow_id_is_an_unknown_flow(client, admin_api, member_api):
    for resp in (admin_api.get("/header-flows/a%00b"), member_api.put("/header-flows/a%00b", json={"headers": {}}),
                 client.get("/connect/a%00b"), client.get("/connect/abc%0A")):
        assert resp.status_code == 404, resp.request.path


def test_nul_in_the_pages(app, client, admin_id):
    """Searches drop it (as the sessions page does); a form field with it is a 400 page."""
    admin = Web(client).login("admin@example.com")
    for path in ["/users?q=admin%00", "/servers?q=%00", "/keys?q=%00", "/services?q=%00", "/audit?q=%00"]:
        assert admin.get(path).status_code == 200, path
    assert "admin@example.com" in admin.get("/users?q=admin%00").get_data(as_text=True)
    anonymous = Web(app.test_client())
    token = csrf_in(anonymous.client.get("/login").get_data(as_text=True))
    r = anonymous.client.post("/login", data={"email": "admin@example.com\x00", "password": PASSWORD,
                                              "csrf_token": token})
    assert r.status_code == 400 and "NUL" in r.get_data(as_text=True)
