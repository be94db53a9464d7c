"""/api/v1/mcp-servers: validation of auth types, headers and per-user header keys;
header values and OAuth client secrets are write-only."""
from __future__ import annotations

import pytest

from app.models import McpServer
from tests.support.api import admin_api  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.api import (assert_error, audit_actions, count, detached, last_event, new_key, new_server, unchanged,
                               with_samples)

UNREACHABLE = "http://127.0.0.1:9/mcp"  # the discard port: nothing listens


def stored(app, server_id) -> McpServer:
    return detached(app, McpServer, server_id)



def create(admin_api, **fields):
    """POST a server; by default at the real upstream, since enabled none/headers servers are contacted."""
    return admin_api.post("/mcp-servers", json={"name": "srv", "url": admin_api.mcp_url, **with_samples(fields)})


# --- create -----------------------------------------------------------------------------

def test_create_with_defaults(app, admin_api):
    r = create(admin_api)
    assert r.status_code == 201
    server = r.get_json()
    assert {k: server[k] for k in ("name", "url", "auth_type", "headers", "per_user_header_keys", "oauth",
                                    "allow_on_all_virtual_keys", "enabled", "connect_timeout", "read_timeout")} == {
        "name": "srv", "url": admin_api.mcp_url, "auth_type": "none", "headers": [], "per_user_header_keys": [],
        "oauth": None, "allow_on_all_virtual_keys": False, "enabled": True, "connect_timeout": 5.0,
        "read_timeout": 30.0}
    assert server["tools"] and server["tools_refreshed_at"]  # discovered at the upstream
    assert admin_api.get(f"/mcp-servers/{server['id']}").get_json() == server
    assert audit_actions(app) == ["mcp_server.create"]
    assert last_event(app).detail == f"auth_type=none, headers=, tools={len(server['tools'])}"


def test_create_with_every_field(admin_api):
    server = create(admin_api, name="full", url="http://10.0.0.5:8000/mcp", auth_type="per_user_headers",
                    per_user_header_keys=["X-User-Token"], headers={"X-Team": "core"},
                    allow_on_all_virtual_keys=True, enabled=False).get_json()
    assert server["auth_type"] == "per_user_headers"
    assert server["per_user_header_keys"] == ["x-user-token"]
    assert server["headers"] == ["X-Team"]
    assert (server["allow_on_all_virtual_keys"], server["enabled"]) == (True, False)


@pytest.mark.parametrize("name", ["a", "gh", "my-server-2", "a" + "b" * 39, "x-", "  padded  "])
def test_valid_names(admin_api, name):
    assert create(admin_api, name=name).get_json()["name"] == name.strip()


@pytest.mark.parametrize("name", ["", "   ", "A", "Github", "1abc", "-abc", "a_b", "a.b", "a b", "a/b", "ä",
                                  "a" * 41, 7, None, ["a"]])
def test_invalid_names(app, admin_api, name):
    with unchanged(admin_api, "/mcp-servers"):
        assert_error(create(admin_api, name=name), 422, "validation_failed", {"name"})
    assert count(app, McpServer) == 0


def test_duplicate_name(app, admin_api):
    new_server(admin_api, "gh")
    with unchanged(admin_api, "/mcp-servers"):
        err = assert_error(create(admin_api, name="gh"), 409, "conflict")
    assert err["fields"] == {"name": "is already taken"}
    assert count(app, McpServer) == 1


@pytest.mark.parametrize("url", ["http://localhost:8080/mcp", "https://mcp.example.com", "HTTPS://Example.com/x?y=1"])
def test_valid_urls(admin_api, url):
    assert create(admin_api, url=url, enabled=False).status_code == 201  # disabled: not contacted


@pytest.mark.parametrize("url", ["ftp://example.com/mcp", "file:///etc/passwd", "javascript:alert(1)",
                                 "example.com/mcp", "localhost:8080", "http://", "https:///path",
                                 "https://user:pw@example.com/mcp", "https://token@example.com/",
                                 "https://example.com/\nX-Injected: 1", "", 42, None, "https://" + "a" * 2050])
def test_invalid_urls(app, admin_api, url):
    assert_error(create(admin_api, url=url, enabled=False), 422, "validation_failed", {"url"})
    assert count(app, McpServer) == 0


@pytest.mark.parametrize("fields,bad", [
    ({"url": None}, {"url"}),
    ({"auth_type": "basic"}, {"auth_type"}),
    ({"auth_type": None}, {"auth_type"}),
    ({"allow_on_all_virtual_keys": "true"}, {"allow_on_all_virtual_keys"}),
    ({"enabled": 0}, {"enabled"}),
    ({"tools": [{"name": "x"}]}, {"tools"}),
    ({"id": 5}, {"id"}),
    ({"headers": ["X-A"]}, {"headers"}),
    ({"per_user_header_keys": "x-a"}, {"per_user_header_keys"}),
    ({"oauth": "client"}, {"oauth"}),
])
def test_wrong_types(app, admin_api, fields, bad):
    assert_error(create(admin_api, **fields), 422, "validation_failed", bad)
    assert count(app, McpServer) == 0 and audit_actions(app) == []


def test_missing_required_fields(admin_api):
    err = assert_error(admin_api.post("/mcp-servers", json={}), 422, "validation_failed", {"name", "url"})
    assert err["fields"]["name"] == "is required"


# --- shared headers ---------------------------------------------------------------------------

def test_headers_are_write_only(app, admin_api):
    r = create(admin_api, auth_type="headers", headers={"X-Api-Key": "value-one", "Authorization": "Bearer two"})
    assert r.status_code == 201
    assert r.get_json()["headers"] == ["Authorization", "X-Api-Key"]
    text = r.get_data(as_text=True) + admin_api.get("/mcp-servers").get_data(as_text=True) + \
        admin_api.get(f"/mcp-servers/{r.get_json()['id']}").get_data(as_text=True)
    assert "value-one" not in text and "Bearer two" not in text
    assert stored(app, r.get_json()["id"]).shared_headers == {"X-Api-Key": "value-one", "Authorization": "Bearer two"}
    assert "value-one" not in last_event(app).detail


@pytest.mark.parametrize("auth_type,headers", [
    ("headers", {}),
    ("headers", None),
    ("headers", {"Bad Header": "v"}),
    ("headers", {"": "v"}),
    ("headers", {"X:Y": "v"}),
    ("headers", {"X-" + "a" * 70: "v"}),
    ("headers", {"Host": "evil.example.com"}),
    ("headers", {"content-type": "text/plain"}),
    ("headers", {"Mcp-Session-Id": "abc"}),
    ("headers", {"X-A": "1", "x-a": "2"}),
    ("headers", {"X-A": ""}),
    ("headers", {"X-A": "   "}),
    ("headers", {"X-A": None}),
    ("headers", {"X-A": 5}),
    ("headers", {"X-A": "line\r\nX-Injected: 1"}),
    ("headers", {"X-A": "x" * 8193}),
    ("none", {"X-A": "v"}),
])
def test_invalid_headers(app, admin_api, auth_type, headers):
    assert_error(create(admin_api, auth_type=auth_type, headers=headers), 422, "validation_failed", {"headers"})
    assert count(app, McpServer) == 0


# --- per-user header keys -------------------------------------------------------------------

def test_per_user_keys_are_stored_canonical(app, admin_api):
    server = create(admin_api, auth_type="per_user_headers",
                    per_user_header_keys=[" X-User-Token ", "X-TEAM", "authorization"]).get_json()
    assert server["per_user_header_keys"] == ["authorization", "x-team", "x-user-token"]
    assert stored(app, server["id"]).per_user_header_keys == ["authorization", "x-team", "x-user-token"]


@pytest.mark.parametrize("keys", [
    [], None, ["X-A", "x-a"], ["X-A", " x-a "], ["x-a", "x-b", "X-B"], [""], ["   "], ["x-a", ""],
    ["bad key"], ["x:y"], [1], ["x-a", None], "x-a", {"x-a": 1}, ["host"], ["Content-Length"],
])
def test_invalid_per_user_keys(app, admin_api, keys):
    assert_error(create(admin_api, auth_type="per_user_headers", per_user_header_keys=keys), 422,
                 "validation_failed", {"per_user_header_keys"})
    assert count(app, McpServer) == 0


def test_per_user_headers_needs_keys(admin_api):
    err = assert_error(create(admin_api, auth_type="per_user_headers"), 422, "validation_failed",
                       {"per_user_header_keys"})
    assert "at least one" in err["fields"]["per_user_header_keys"]


@pytest.mark.parametrize("auth_type", ["none", "headers", "oauth", "per_user_oauth"])
def test_per_user_keys_only_for_per_user_headers(app, admin_api, auth_type):
    extra = {"headers": {"X-A": "v"}} if auth_type == "headers" else {}
    assert_error(create(admin_api, auth_type=auth_type, per_user_header_keys=["x-user"], **extra), 422,
                 "validation_failed", {"per_user_header_keys"})
    assert count(app, McpServer) == 0


@pytest.mark.parametrize("header", ["X-User", "x-user", " X-USER "])
def test_shared_header_that_is_a_per_user_key_is_refused(app, admin_api, header):
    err = assert_error(create(admin_api, auth_type="per_user_headers", per_user_header_keys=["X-User"],
                              headers={header: "shared"}), 422, "validation_failed", {"headers"})
    assert "x-user" in err["fields"]["headers"]
    assert count(app, McpServer) == 0


def test_per_user_headers_with_another_shared_header(admin_api):
    server = create(admin_api, auth_type="per_user_headers", per_user_header_keys=["x-user"],
                    headers={"X-Team": "core"}).get_json()
    assert (server["headers"], server["per_user_header_keys"]) == (["X-Team"], ["x-user"])


# --- OAuth settings -------------------------------------------------------------------------

@pytest.mark.parametrize("auth_type", ["none", "headers", "per_user_headers"])
def test_no_oauth_settings_for_non_oauth_types(app, admin_api, auth_type):
    extra = {"none": {}, "headers": {"headers": {"X-A": "v"}},
             "per_user_headers": {"per_user_header_keys": ["x-user"]}}[auth_type]
    assert_error(create(admin_api, auth_type=auth_type, oauth={"client_id": "abc"}, **extra), 422,
                 "validation_failed", {"oauth"})
    assert count(app, McpServer) == 0


@pytest.mark.parametrize("auth_type", ["oauth", "per_user_oauth"])
def test_oauth_settings(app, admin_api, auth_type):
    server = create(admin_api, auth_type=auth_type, oauth={
        "client_id": "cid", "client_secret": "very-secret-client", "scopes": "read write",
        "authorization_server": "https://auth.example.com"}).get_json()
    assert server["oauth"] == {"client_id": "cid", "scopes": ["read", "write"],
                               "authorization_server": "https://auth.example.com", "client_secret_set": True}
    assert stored(app, server["id"]).oauth_config["client_secret"] == "very-secret-client"
    assert create(admin_api, name="bare", auth_type=auth_type).get_json()["oauth"] is None


@pytest.mark.parametrize("oauth", [{"client_id": 5}, {"client_secret": ["x"]}, {"scopes": [1]},
                                   {"scopes": ["two words"]}, {"authorization_server": "ftp://x"},
                                   {"token_url": "https://x"}, ["client_id"]])
def test_invalid_oauth_settings(app, admin_api, oauth):
    assert_error(create(admin_api, auth_type="oauth", oauth=oauth), 422, "validation_failed", {"oauth"})
    assert count(app, McpServer) == 0


# --- discovery at the upstream -------------------------------------------------------------

def test_unreachable_server_is_refused(app, admin_api):
    with unchanged(admin_api, "/mcp-servers"):
        err = assert_error(create(admin_api, url=UNREACHABLE), 422, "validation_failed", {"url"})
    assert "unreachable" in err["fields"]["url"]
    assert count(app, McpServer) == 0
    # disabled servers are stored without being contacted; per_user_headers ones are verified
    # with the sample values
    assert create(admin_api, url=UNREACHABLE, enabled=False).get_json()["tools"] == []
    err = assert_error(create(admin_api, name="pu", url=UNREACHABLE, auth_type="per_user_headers",
                              per_user_header_keys=["x-k"]), 422, "validation_failed", {"sample_headers"})
    assert "sample-value" not in str(err)


def test_update_to_unreachable_changes_nothing(app, admin_api):
    server = new_server(admin_api, "moving")
    path = f"/mcp-servers/{server['id']}"
    with unchanged(admin_api, path):
        assert_error(admin_api.patch(path, json={"url": UNREACHABLE}), 422, "validation_failed", {"url"})
    off = new_server(admin_api, "off", url=UNREACHABLE, enabled=False)
    with unchanged(admin_api, f"/mcp-servers/{off['id']}"):
        assert_error(admin_api.patch(f"/mcp-servers/{off['id']}", json={"enabled": True}), 422,
                     "validation_failed", {"url"})
    # a change that does not affect how it is reached needs no contact
    assert admin_api.patch(f"/mcp-servers/{off['id']}", json={"name": "still-off"}).status_code == 200


def test_timeouts(admin_api):
    server = create(admin_api, connect_timeout=2, read_timeout=10.5).get_json()
    assert (server["connect_timeout"], server["read_timeout"]) == (2.0, 10.5)
    body = admin_api.patch(f"/mcp-servers/{server['id']}", json={"read_timeout": 600}).get_json()
    assert body["read_timeout"] == 600.0


@pytest.mark.parametrize("value", [0, 0.05, 601, -1, "5", True, None, [5]])
def test_invalid_timeouts(app, admin_api, value):
    for field in ("connect_timeout", "read_timeout"):
        assert_error(create(admin_api, **{field: value}), 422, "validation_failed", {field})
    assert count(app, McpServer) == 0


def test_refresh_tools(app, admin_api):
    server = new_server(admin_api, "fresh")
    r = admin_api.post(f"/mcp-servers/{server['id']}/refresh-tools")
    assert r.status_code == 200
    body = r.get_json()
    assert [t["name"] for t in body["tools"]] == [t["name"] for t in server["tools"]]
    assert body["tools_refreshed_at"] >= server["tools_refreshed_at"]
    event = last_event(app)
    assert (event.action, event.detail) == ("mcp_server.refresh_tools", f"tools={len(body['tools'])}, added=0, removed=0")


def test_refresh_tools_refusals(app, admin_api):
    per_user = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-k"])
    with unchanged(admin_api, "/mcp-servers"):
        assert_error(admin_api.post(f"/mcp-servers/{per_user['id']}/refresh-tools"), 409, "conflict")
        assert_error(admin_api.post("/mcp-servers/999999/refresh-tools"), 404, "not_found")
    off = new_server(admin_api, "off", url=UNREACHABLE, enabled=False)
    with unchanged(admin_api, "/mcp-servers"):
        assert_error(admin_api.post(f"/mcp-servers/{off['id']}/refresh-tools"), 422, "validation_failed", {"url"})


# --- list and get ---------------------------------------------------------------------------

def test_list_and_search(admin_api):
    for name in ("zeta", "alpha", "github", "gitlab"):
        new_server(admin_api, name)
    names = [s["name"] for s in admin_api.get("/mcp-servers").get_json()["mcp_servers"]]
    assert names == ["alpha", "github", "gitlab", "zeta"]
    found = admin_api.get("/mcp-servers?q=GIT").get_json()
    assert [s["name"] for s in found["mcp_servers"]] == ["github", "gitlab"] and found["total_count"] == 2
    assert admin_api.get("/mcp-servers?q=%25").get_json()["total_count"] == 0


def test_get_unknown(admin_api):
    assert_error(admin_api.get("/mcp-servers/999999"), 404, "not_found")


# --- update ---------------------------------------------------------------------------------

def test_update_plain_fields(app, admin_api):
    server = new_server(admin_api, "old")
    r = admin_api.patch(f"/mcp-servers/{server['id']}", json={
        "name": "new", "url": "http://other.example/mcp", "enabled": False, "allow_on_all_virtual_keys": True})
    assert r.status_code == 200
    body = r.get_json()
    assert (body["name"], body["url"], body["enabled"], body["allow_on_all_virtual_keys"]) == (
        "new", "http://other.example/mcp", False, True)
    assert admin_api.get(f"/mcp-servers/{server['id']}").get_json() == body
    assert last_event(app).detail == "changed name, url, allow_on_all_virtual_keys, enabled"


def test_update_keeping_own_name(app, admin_api):
    server = new_server(admin_api, "same")
    assert admin_api.patch(f"/mcp-servers/{server['id']}", json={"name": "same"}).status_code == 200
    assert audit_actions(app) == ["mcp_server.create"]


def test_update_to_a_taken_name(admin_api):
    new_server(admin_api, "taken")
    server = new_server(admin_api, "mine")
    with unchanged(admin_api, "/mcp-servers"):
        assert_error(admin_api.patch(f"/mcp-servers/{server['id']}", json={"name": "taken"}), 409, "conflict")


@pytest.mark.parametrize("payload,bad", [
    ({"name": "Bad Name"}, {"name"}), ({"name": None}, {"name"}), ({"name": ""}, {"name"}),
    ({"url": "ftp://x"}, {"url"}), ({"enabled": "no"}, {"enabled"}), ({"auth_type": "magic"}, {"auth_type"}),
    ({"headers": "X-A: 1"}, {"headers"}), ({"per_user_header_keys": [1]}, {"per_user_header_keys"}),
    ({"tools": []}, {"tools"}), ({"name": "ok-name", "url": 3}, {"url"}),
])
def test_update_invalid(admin_api, payload, bad):
    server = new_server(admin_api)
    with unchanged(admin_api, "/mcp-servers", f"/mcp-servers/{server['id']}"):
        assert_error(admin_api.patch(f"/mcp-servers/{server['id']}", json=payload), 422, "validation_failed", bad)


def test_update_unknown(admin_api):
    assert_error(admin_api.patch("/mcp-servers/999999", json={"enabled": False}), 404, "not_found")


def test_headers_patch_merges(app, admin_api):
    server = new_server(admin_api, "hdr", auth_type="headers", headers={"X-A": "1", "X-B": "2"})
    path = f"/mcp-servers/{server['id']}"
    # a string sets (names compare case-insensitively), headers not named are kept
    assert admin_api.patch(path, json={"headers": {"x-a": "one"}}).get_json()["headers"] == ["X-B", "x-a"]
    assert stored(app, server["id"]).shared_headers == {"x-a": "one", "X-B": "2"}
    # a new one is added
    assert admin_api.patch(path, json={"headers": {"X-C": "3"}}).get_json()["headers"] == ["X-B", "X-C", "x-a"]
    # null removes
    assert admin_api.patch(path, json={"headers": {"X-B": None, "X-A": None}}).get_json()["headers"] == ["X-C"]
    assert stored(app, server["id"]).shared_headers == {"X-C": "3"}
    # removing one that is not there changes nothing
    n = len(audit_actions(app))
    assert admin_api.patch(path, json={"headers": {"X-Nope": None}}).get_json()["headers"] == ["X-C"]
    # setting the same value again changes nothing either
    assert admin_api.patch(path, json={"headers": {"X-C": "3"}}).status_code == 200
    assert len(audit_actions(app)) == n
    assert last_event(app).detail == "changed headers"


def test_headers_patch_cannot_remove_the_last_header(app, admin_api):
    server = new_server(admin_api, "hdr", auth_type="headers", headers={"X-A": "1"})
    with unchanged(admin_api, f"/mcp-servers/{server['id']}"):
        assert_error(admin_api.patch(f"/mcp-servers/{server['id']}", json={"headers": {"X-A": None}}), 422,
                     "validation_failed", {"headers"})
    assert stored(app, server["id"]).shared_headers == {"X-A": "1"}


def test_headers_patch_answers_names_only(app, admin_api):
    server = new_server(admin_api, "hdr", auth_type="headers", headers={"X-A": "1"})
    r = admin_api.patch(f"/mcp-servers/{server['id']}", json={"headers": {"X-A": "patched-secret-value"}})
    assert r.status_code == 200 and r.get_json()["headers"] == ["X-A"], r.get_json()
    assert "patched-secret-value" not in r.get_data(as_text=True)
    assert stored(app, server["id"]).shared_headers == {"X-A": "patched-secret-value"}


@pytest.mark.parametrize("new_keys", [["X-User", "X-Team"], ["x-team", "x-user"], [" x-user", "X-TEAM  "],
                                      ["X-TEAM", "X-USER"]])
def test_per_user_keys_change_of_case_spacing_or_order_is_no_change(app, admin_api, new_keys):
    server = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-team", "x-user"])
    before = admin_api.get(f"/mcp-servers/{server['id']}").get_json()
    r = admin_api.patch(f"/mcp-servers/{server['id']}", json={"per_user_header_keys": new_keys})
    assert r.status_code == 200
    assert r.get_json() == before
    assert r.get_json()["per_user_header_keys"] == ["x-team", "x-user"]
    assert "mcp_server.update" not in audit_actions(app)


def test_per_user_keys_real_change(app, admin_api):
    server = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-team"])
    r = admin_api.patch(f"/mcp-servers/{server['id']}", json={"per_user_header_keys": ["X-Team", "X-Region"],
                                                               "sample_headers": {"x-team": "a", "X-Region": "b"}})
    assert r.get_json()["per_user_header_keys"] == ["x-region", "x-team"]
    event = last_event(app)
    assert (event.action, event.detail) == ("mcp_server.update", "changed per_user_header_keys")


@pytest.mark.parametrize("keys", [[], None, ["x-a", "X-A"], [""], ["  "]])
def test_per_user_keys_patch_invalid(admin_api, keys):
    server = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-team"])
    with unchanged(admin_api, f"/mcp-servers/{server['id']}"):
        assert_error(admin_api.patch(f"/mcp-servers/{server['id']}", json={"per_user_header_keys": keys}), 422,
                     "validation_failed", {"per_user_header_keys"})


def test_patch_shared_header_clashing_with_a_per_user_key(admin_api):
    server = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-user"],
                        headers={"X-Team": "core"})
    path = f"/mcp-servers/{server['id']}"
    with unchanged(admin_api, path):
        assert_error(admin_api.patch(path, json={"headers": {"X-USER": "shared"}}), 422, "validation_failed",
                     {"headers"})
        assert_error(admin_api.patch(path, json={"per_user_header_keys": ["x-user", "X-Team"]}), 422,
                     "validation_failed", {"headers"})
    # removing the shared header and making it per-user in one step is fine
    r = admin_api.patch(path, json={"headers": {"X-Team": None}, "per_user_header_keys": ["x-user", "x-team"],
                                    "sample_headers": {"x-user": "u", "x-team": "t"}})
    assert r.status_code == 200
    assert (r.get_json()["headers"], r.get_json()["per_user_header_keys"]) == ([], ["x-team", "x-user"])


def test_patch_auth_type(app, admin_api):
    server = new_server(admin_api, "pu", auth_type="per_user_headers", per_user_header_keys=["x-user"])
    path = f"/mcp-servers/{server['id']}"
    # to per_user_oauth: the per-user keys go with the old type
    body = admin_api.patch(path, json={"auth_type": "per_user_oauth", "oauth": {"client_id": "c"}}).get_json()
    assert (body["auth_type"], body["per_user_header_keys"], body["oauth"]["client_id"]) == (
        "per_user_oauth", [], "c")
    # back to per_user_headers needs keys
    with unchanged(admin_api, path):
        assert_error(admin_api.patch(path, json={"auth_type": "per_user_headers"}), 422, "validation_failed",
                     {"per_user_header_keys"})
    body = admin_api.patch(path, json={"auth_type": "per_user_headers", "per_user_header_keys": ["X-K"],
                                       "sample_headers": {"x-k": "v"}}).get_json()
    assert (body["auth_type"], body["per_user_header_keys"], body["oauth"]) == ("per_user_headers", ["x-k"], None)
    # to headers needs a header
    with unchanged(admin_api, path):
        assert_error(admin_api.patch(path, json={"auth_type": "headers"}), 422, "validation_failed", {"headers"})
    body = admin_api.patch(path, json={"auth_type": "headers", "headers": {"X-Api-Key": "k"}}).get_json()
    assert (body["auth_type"], body["headers"], body["per_user_header_keys"]) == ("headers", ["X-Api-Key"], [])
    # to none while shared headers remain is refused; removing them too works
    with unchanged(admin_api, path):
        assert_error(admin_api.patch(path, json={"auth_type": "none"}), 422, "validation_failed", {"headers"})
    body = admin_api.patch(path, json={"auth_type": "none", "headers": {"X-Api-Key": None}}).get_json()
    assert (body["auth_type"], body["headers"]) == ("none", [])


@pytest.mark.parametrize("auth_type", ["none", "per_user_headers"])
def test_patch_oauth_on_non_oauth_server(admin_api, auth_type):
    extra = {"per_user_header_keys": ["x-a"]} if auth_type == "per_user_headers" else {}
    server = new_server(admin_api, "plain", auth_type=auth_type, **extra)
    with unchanged(admin_api, f"/mcp-servers/{server['id']}"):
        assert_error(admin_api.patch(f"/mcp-servers/{server['id']}", json={"oauth": {"client_id": "c"}}), 422,
                     "validation_failed", {"oauth"})


def test_patch_oauth_keeps_the_client_secret(app, admin_api):
    server = new_server(admin_api, "oa", auth_type="oauth", oauth={"client_id": "a", "client_secret": "keep-me"})
    body = admin_api.patch(f"/mcp-servers/{server['id']}", json={"oauth": {"client_id": "b"}}).get_json()
    assert body["oauth"] == {"client_id": "b", "client_secret_set": True}
    assert stored(app, server["id"]).oauth_config == {"client_id": "b", "client_secret": "keep-me"}
    assert "keep-me" not in last_event(app).detail


# --- delete ---------------------------------------------------------------------------------

def test_delete_removes_grants(app, admin_api):
    server = new_server(admin_api, "gone")
    keep = new_server(admin_api, "kept")
    key = new_key(admin_api, mcp_servers=[{"server_id": server["id"], "tools": ["a"]},
                                          {"server_id": keep["id"], "tools": None}])
    r = admin_api.delete(f"/mcp-servers/{server['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    assert_error(admin_api.get(f"/mcp-servers/{server['id']}"), 404)
    assert admin_api.get(f"/virtual-keys/{key['id']}").get_json()["mcp_servers"] == [
        {"server_id": keep["id"], "tools": None}]
    assert audit_actions(app)[-1] == "mcp_server.delete"
    assert last_event(app).target == "gone"
    assert_error(admin_api.delete(f"/mcp-servers/{server['id']}"), 404)


def test_delete_unknown(admin_api):
    with unchanged(admin_api, "/mcp-servers"):
        assert_error(admin_api.delete("/mcp-servers/999999"), 404, "not_found")
