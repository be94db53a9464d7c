"""The dashboard pages through the real app and its test client (CSRF on, as in production)."""
from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, McpServer, Service, User, VirtualKey
from app.ops import keys as key_ops
from app.ops import servers as server_ops
from app.ops import services as service_ops
from tests.conftest import Api, make_user, token_for
from tests.support.mcp import mcp_url
from tests.support.web import HX, Web, csrf_in, ok, text

pytestmark = pytest.mark.usefixtures("real_upstream")  # servers are discovered when created


SECRET_RE = re.compile(r'class="secret"[^>]*>(vk_[A-Za-z0-9_\-]+)<')


@pytest.fixture
def admin(client, admin_id) -> Web:
    return Web(client).login("admin@example.com")


@pytest.fixture
def member(app, member_id) -> Web:
    return Web(app.test_client()).login("member@example.com")


def one(app, model, **by):
    with app.app_context():
        return db.session.scalar(select(model).filter_by(**by))


def new_server(app, name="gh", tools=None, **fields):
    with app.app_context():
        server = server_ops.create_server({"name": name, "url": mcp_url(), **fields})
        if tools is not None:
            server.tools = tools
        db.session.commit()
        return server.id


def new_service(app, name="billing"):
    with app.app_context():
        service = service_ops.create_service({"name": name, "base_url": "http://127.0.0.1:9/api",
                                              "secret": "service-root-canary"})
        db.session.commit()
        return service.id


def new_key(app, name, owner_id=None):
    with app.app_context():
        key, _ = key_ops.create_key({"name": name, "owner_id": owner_id}, source="api")
        db.session.commit()
        return key.id


# --- who may see what ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/servers", "/services", "/keys", "/users", "/audit", "/keys/new", "/"])
def test_login_required_redirects(client, path):
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login?next=")


def test_member_gets_403_on_admin_pages(app, member):
    sid = new_server(app)
    for path in ["/servers", "/servers/new", f"/servers/{sid}", "/services", "/services/new", "/users",
                 "/users/new", "/audit", "/keys/new"]:
        r = member.get(path)
        assert r.status_code == 403, path
        assert "This page is for admins." in text(r)
    assert member.post("/servers/new", {"name": "x", "url": mcp_url()}).status_code == 403
    assert member.post(f"/servers/{sid}/delete").status_code == 403
    assert one(app, McpServer, id=sid) is not None
    nav = text(member.get("/keys"))
    assert "Virtual keys" in nav and "/servers" not in nav and "/audit" not in nav


def test_member_sees_only_own_keys(app, member, member_id, admin_id):
    mine = new_key(app, "member-laptop", owner_id=member_id)
    theirs = new_key(app, "admin-ci", owner_id=admin_id)
    nobody = new_key(app, "shared-bot")
    page = text(member.get("/keys"))
    assert "member-laptop" in page and "admin-ci" not in page and "shared-bot" not in page
    assert "New virtual key" not in page
    assert member.get(f"/keys/{mine}").status_code == 200
    for other in (theirs, nobody):
        assert member.get(f"/keys/{other}").status_code == 404
        assert member.post(f"/keys/{other}/revoke", htmx=True).status_code == 404
        assert member.post(f"/keys/{other}/grants", {"server": []}).status_code == 403
    assert one(app, VirtualKey, id=theirs).active and one(app, VirtualKey, id=nobody).active
    # the member's own key page shows no editor, but does offer revoke
    detail = text(member.get(f"/keys/{mine}"))
    assert "Save grants" not in detail and "Save settings" not in detail and "Revoke" in detail
    r = member.post(f"/keys/{mine}/revoke", htmx=True)
    assert r.status_code == 200 and "revoked" in text(r)
    assert not one(app, VirtualKey, id=mine).active


def test_htmx_request_without_login_navigates_to_login(client):
    r = client.get("/servers?q=gh", headers=HX)
    assert r.status_code == 200 and r.get_data() == b""
    assert r.headers["HX-Redirect"].startswith("/login?next=/servers")


def test_post_without_csrf_token_is_refused(app, admin):
    r = admin.client.post("/servers/new", data={"name": "gh", "url": mcp_url()})
    assert r.status_code == 400 and "Reload the page and try again" in text(r)
    assert one(app, McpServer, name="gh") is None


def test_unknown_ids_are_404_pages(admin):
    for path in ["/servers/999", "/services/999", "/users/999", "/keys/999"]:
        r = admin.get(path)
        assert r.status_code == 404 and "Not found" in text(r), path


# --- MCP servers --------------------------------------------------------------------------------

def test_server_create_edit_delete(app, admin):
    form = text(admin.get("/servers/new"))
    assert 'name="auth_type"' in form and 'name="header_name"' in form
    r = admin.post("/servers/new", {"name": "github", "url": mcp_url(), "auth_type": "headers",
                                    "header_name": ["X-Api-Key", ""], "header_value": ["canary-server-1", ""],
                                    "enabled": "on"})
    assert r.status_code == 303 and r.headers["Location"] == "/servers"
    listing = text(admin.get("/servers"))
    assert "github" in listing and "MCP server github created." in listing
    server = one(app, McpServer, name="github")
    assert server.auth_type == "headers" and server.enabled and not server.allow_on_all_virtual_keys
    with app.app_context():
        assert db.session.get(McpServer, server.id).shared_headers == {"X-Api-Key": "canary-server-1"}

    edit = ok(admin.get(f"/servers/{server.id}"))
    assert "X-Api-Key" in edit and "leave blank to keep" in edit and "canary-server-1" not in edit

    # blank value keeps the stored one; a new row adds a header; other fields change
    r = admin.post(f"/servers/{server.id}", {
        "name": "github", "url": mcp_url() + "?v=2", "auth_type": "headers",
        "header_value:X-Api-Key": "", "header_name": ["X-Team"], "header_value": ["team-7"],
        "allow_on_all_virtual_keys": "on", "enabled": "on"})
    assert r.status_code == 303, text(r)
    with app.app_context():
        s = db.session.get(McpServer, server.id)
        assert s.url == mcp_url() + "?v=2" and s.allow_on_all_virtual_keys
        assert s.shared_headers == {"X-Api-Key": "canary-server-1", "X-Team": "team-7"}

    # a typed value replaces, "remove" drops; switching to per_user_headers with keys
    r = admin.post(f"/servers/{server.id}", {
        "name": "github", "url": mcp_url() + "?v=2", "auth_type": "per_user_headers",
        "remove_header": ["X-Api-Key", "X-Team"], "per_user_header_keys": "X-User-Token, x-workspace",
        "sample_name": ["X-User-Token", "x-workspace"], "sample_value": ["sample-1", "sample-2"],
        "enabled": "on"})
    assert r.status_code == 303, text(r)
    with app.app_context():
        s = db.session.get(McpServer, server.id)
        assert s.shared_headers == {} and s.auth_type == "per_user_headers"
        assert s.per_user_header_keys == ["x-user-token", "x-workspace"]
    assert 'value="x-user-token, x-workspace"' in text(admin.get(f"/servers/{server.id}"))

    # clearing the keys of a per_user_headers server is refused, inline
    r = admin.post(f"/servers/{server.id}", {"name": "github", "url": mcp_url() + "?v=2",
                                             "auth_type": "per_user_headers", "per_user_header_keys": "",
                                             "enabled": "on"})
    assert r.status_code == 422
    assert "per_user_header_keys-error" in text(r)
    assert one(app, McpServer, id=server.id).per_user_header_keys == ["x-user-token", "x-workspace"]

    r = admin.post(f"/servers/{server.id}/delete", htmx=True)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == "/servers"
    assert one(app, McpServer, id=server.id) is None
    assert "No MCP servers yet." in text(admin.get("/servers"))


def test_server_form_errors_inline(app, admin):
    r = admin.post("/servers/new", {"name": "Bad Name", "url": "ftp://nowhere", "auth_type": "none",
                                    "header_name": ["X-Secret"], "header_value": ["canary-typed-value"]})
    assert r.status_code == 422
    page = text(r)
    assert 'id="name-error"' in page and "must match" in page
    assert 'id="url-error"' in page and "http:// or https:// URL" in page
    assert 'value="Bad Name"' in page  # what was typed comes back ...
    assert "canary-typed-value" not in page  # ... but never a header value
    assert "<html" in page and 'name="csrf_token"' in page
    with app.app_context():
        assert db.session.scalar(select(db.func.count(McpServer.id))) == 0
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "mcp_server.create")) is None

    # rules that combine fields come from the ops layer too
    r = admin.post("/servers/new", {"name": "gh", "url": mcp_url(), "auth_type": "headers"})
    assert r.status_code == 422 and "needs at least one header" in text(r)
    r = admin.post("/servers/new", {"name": "gh", "url": mcp_url(), "auth_type": "headers",
                                    "header_name": ["X-A", "X-A"], "header_value": ["1", "2"]})
    assert r.status_code == 422 and "appears more than once" in text(r)

    new_server(app, "taken")
    r = admin.post("/servers/new", {"name": "taken", "url": mcp_url(), "auth_type": "none"})
    assert r.status_code == 409 and "is already taken" in text(r)


def test_refresh_tools_button(app, admin, member, faulty, monkeypatch):
    from tests.support.mcp import NEW_TOOLS, add_server, free_port, stored_tools

    url, upstream = faulty
    sid = add_server(app, "watched", f"{url}/ok/mcp")
    page = text(admin.get(f"/servers/{sid}"))
    assert "Refresh tools" in page and f'hx-post="/servers/{sid}/refresh-tools"' in page
    assert "<code>added</code>" not in page
    monkeypatch.setattr(upstream, "TOOLS", NEW_TOOLS)  # the upstream gained a tool
    # htmx: the tools card is replaced in place with the new list
    r = admin.post(f"/servers/{sid}/refresh-tools", htmx=True)
    assert r.status_code == 200, text(r)
    fragment = text(r)
    assert fragment.startswith("<h2>Tools") and "<html" not in fragment
    assert '<span class="badge">2</span>' in fragment and "<code>added</code>" in fragment
    assert stored_tools(app, "watched") == ["x", "added"]
    assert one(app, AuditEvent, action="mcp_server.refresh_tools").detail == "tools=2, added=1, removed=0"
    # without JavaScript: back to the server page with a message
    r = admin.post(f"/servers/{sid}/refresh-tools")
    assert r.status_code == 303 and r.headers["Location"] == f"/servers/{sid}"
    assert "2 tools discovered." in text(admin.get(f"/servers/{sid}"))
    # an unreachable upstream: the reason in the fragment (422), the stored list kept
    with app.app_context():
        db.session.get(McpServer, sid).url = f"http://127.0.0.1:{free_port()}/mcp"
        db.session.commit()
    r = admin.post(f"/servers/{sid}/refresh-tools", htmx=True)
    assert r.status_code == 422 and 'role="alert"' in text(r) and "unreachable" in text(r)
    assert "<code>added</code>" in text(r) and stored_tools(app, "watched") == ["x", "added"]
    # admins only, with the CSRF token
    assert member.post(f"/servers/{sid}/refresh-tools", htmx=True).status_code == 403
    assert admin.post(f"/servers/{sid}/refresh-tools", {"csrf_token": ""}).status_code == 400


def test_server_search_and_pagination(app, admin):
    for i in range(23):
        new_server(app, f"srv-{i:02d}")
    new_server(app, "github")
    page1 = text(admin.get("/servers"))
    assert "Page 1 of 2" in page1 and "24 servers" in page1 and "srv-00" in page1 and "srv-22" not in page1
    page2 = admin.get("/servers?page=2", htmx=True)
    body = text(page2)
    assert "srv-22" in body and "srv-00" not in body and "<html" not in body and 'id="servers-table"' in body
    for odd in ("²", "0", "-1", "x", "9" * 30):  # not a page number: the first page, never a 500
        r = admin.get(f"/servers?page={odd}", htmx=True)
        assert r.status_code == 200 and "srv-00" in text(r), odd
    found = admin.get("/servers?q=GIT", htmx=True)
    assert "github" in text(found) and "srv-01" not in text(found)
    assert "1 servers" in text(found)
    # links keep the search term
    for i in range(25):
        new_server(app, f"git-{i:02d}")
    body = text(admin.get("/servers?q=git", htmx=True))
    assert 'href="/servers?q=git&amp;page=2"' in body and 'hx-push-url="true"' in body
    assert "No MCP server matches" in text(admin.get("/servers?q=zzz", htmx=True))


def test_search_box_is_live(admin):
    page = text(admin.get("/servers"))
    assert 'hx-trigger="input changed delay:300ms, search"' in page
    assert 'hx-target="#servers-results"' in page and 'hx-push-url="true"' in page


# --- services -----------------------------------------------------------------------------------

def test_service_create_edit_delete(app, admin):
    r = admin.post("/services/new", {"name": "billing", "description": "Invoices", "base_url": "https://api.example.com",
                                     "credential_header": "Authorization", "secret": "canary-service-secret"})
    assert r.status_code == 303
    service = one(app, Service, name="billing")
    assert service.credential_header == "Authorization"
    page = ok(admin.get(f"/services/{service.id}"))
    assert "leave blank to keep" in page and "canary-service-secret" not in page
    assert "canary-service-secret" not in ok(admin.get("/services"))

    r = admin.post(f"/services/{service.id}", {"name": "billing", "description": "Invoices v2",
                                               "base_url": "https://api.example.com", "credential_header": "X-Key",
                                               "secret": ""})
    assert r.status_code == 303
    with app.app_context():
        s = db.session.get(Service, service.id)
        assert (s.description, s.credential_header, s.secret) == ("Invoices v2", "X-Key", "canary-service-secret")

    r = admin.post(f"/services/{service.id}", {"name": "billing", "description": "", "base_url": "nope",
                                               "credential_header": "Content-Type", "secret": "new-secret-canary"})
    assert r.status_code == 422
    page = text(r)
    assert 'id="base_url-error"' in page and 'id="credential_header-error"' in page
    assert "new-secret-canary" not in page
    with app.app_context():
        assert db.session.get(Service, service.id).secret == "canary-service-secret"

    r = admin.post(f"/services/{service.id}", {"name": "billing", "base_url": "https://api.example.com",
                                               "credential_header": "X-Key", "secret": "rotated"})
    with app.app_context():
        assert db.session.get(Service, service.id).secret == "rotated"

    r = admin.post(f"/services/{service.id}/delete")
    assert r.status_code == 303 and one(app, Service, id=service.id) is None


def test_service_create_requires_secret_and_defaults_header(app, admin):
    r = admin.post("/services/new", {"name": "crm", "base_url": "https://crm.example.com", "credential_header": "",
                                     "secret": ""})
    assert r.status_code == 422 and 'id="secret-error"' in text(r)
    r = admin.post("/services/new", {"name": "crm", "base_url": "https://crm.example.com", "credential_header": "",
                                     "secret": "s3cret-value"})
    assert r.status_code == 303
    assert one(app, Service, name="crm").credential_header == "X-API-Key"


# --- users --------------------------------------------------------------------------------------

def test_user_create_edit_delete(app, client, admin):
    r = admin.post("/users/new", {"email": "Bob@Example.com", "password": "short", "role": "member"})
    assert r.status_code == 422 and 'id="password-error"' in text(r) and "at least 10" in text(r)
    assert one(app, User, email="bob@example.com") is None

    r = admin.post("/users/new", {"email": "Bob@Example.com", "password": "bob-password-1", "role": "member"})
    assert r.status_code == 303
    bob = one(app, User, email="bob@example.com")
    assert bob.role == "member" and bob.active
    assert "bob@example.com" in text(admin.get("/users"))

    r = admin.post("/users/new", {"email": "bob@example.com", "password": "bob-password-1", "role": "member"})
    assert r.status_code == 409 and "is already taken" in text(r)

    # promote, and reset the password (blank keeps it)
    r = admin.post(f"/users/{bob.id}", {"email": "bob@example.com", "role": "admin", "active": "on", "password": ""})
    assert r.status_code == 303
    assert one(app, User, id=bob.id).role == "admin"
    r = admin.post(f"/users/{bob.id}", {"email": "bob@example.com", "role": "admin", "active": "on",
                                        "password": "bob-new-password"})
    assert r.status_code == 303
    Web(app.test_client()).login("bob@example.com", "bob-new-password")

    # deactivate: the user can no longer log in
    r = admin.post(f"/users/{bob.id}", {"email": "bob@example.com", "role": "member", "password": ""})
    assert r.status_code == 303
    assert not one(app, User, id=bob.id).active
    other = app.test_client()
    token = csrf_in(text(other.get("/login")))
    r = other.post("/login", data={"email": "bob@example.com", "password": "bob-new-password", "csrf_token": token})
    assert r.status_code == 401

    r = admin.post(f"/users/{bob.id}/delete", htmx=True)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == "/users"
    assert one(app, User, id=bob.id) is None


def test_last_admin_cannot_be_removed(app, admin, admin_id):
    r = admin.post(f"/users/{admin_id}", {"email": "admin@example.com", "role": "member", "active": "on"})
    assert r.status_code == 409
    assert "the last active admin cannot be demoted or deactivated" in text(r)
    assert one(app, User, id=admin_id).role == "admin"
    r = admin.post(f"/users/{admin_id}/delete", htmx=True)
    assert r.status_code == 409
    assert "you cannot delete your own account" in text(r) and "<html" not in text(r)
    r = admin.post(f"/users/{admin_id}/delete")
    assert r.status_code == 409 and "you cannot delete your own account" in text(r)
    assert one(app, User, id=admin_id) is not None


def test_users_search(app, admin):
    make_user(app, "carol@example.com")
    make_user(app, "dave@example.com")
    body = text(admin.get("/users?q=carol", htmx=True))
    assert "carol@example.com" in body and "dave@example.com" not in body and "<html" not in body


# --- virtual keys -------------------------------------------------------------------------------

def test_key_secret_shown_once(app, admin, member_id):
    form = text(admin.get("/keys/new"))
    assert "member@example.com" in form and 'type="datetime-local"' in form
    r = admin.post("/keys/new", {"name": "ci-bot", "owner_id": str(member_id), "rate_limit_per_minute": "120",
                                 "expires_at": "2099-01-31T12:30"})
    assert r.status_code == 303
    key = one(app, VirtualKey, name="ci-bot")
    assert r.headers["Location"] == f"/keys/{key.id}"
    assert key.source == "dashboard" and key.owner_id == member_id and key.rate_limit_per_minute == 120
    assert key.expires_at.isoformat() == "2099-01-31T12:30:00"  # datetime-local is read as UTC
    assert "vk_" not in r.headers.get("Set-Cookie", "")  # parked encrypted, not in clear

    first = admin.get(r.headers["Location"])
    page = text(first)
    secret = SECRET_RE.search(page).group(1)
    assert secret.startswith("vk_") and len(secret) >= 43
    assert VirtualKey.hash_of(secret) == key.key_hash
    assert "it will not be shown again" in page
    assert 'data-copy="new-key-secret"' in page and 'id="new-key-secret"' in page
    assert first.headers["Cache-Control"] == "no-store"

    # never again: not on the key page, the list, the audit log or any htmx fragment
    for path in [f"/keys/{key.id}", "/keys", "/audit", f"/keys?q={key.key_prefix}"]:
        body = ok(admin.get(path))
        assert secret not in body and 'class="secret"' not in body, path
    assert key.key_prefix in text(admin.get("/keys"))
    event = one(app, AuditEvent, action="virtual_key.create")
    assert "source=dashboard" in event.detail and secret not in event.detail


def test_key_create_errors_inline(app, admin):
    r = admin.post("/keys/new", {"name": "", "owner_id": "", "rate_limit_per_minute": "zero",
                                 "expires_at": "2001-01-01T00:00"})
    assert r.status_code == 422
    page = text(r)
    for field in ("name", "rate_limit_per_minute", "expires_at"):
        assert f'id="{field}-error"' in page, field
    assert "must be in the future" in page and "must be an integer" in page
    with app.app_context():
        assert db.session.scalar(select(db.func.count(VirtualKey.id))) == 0


def test_key_settings_edit(app, admin, member_id):
    kid = new_key(app, "old-name")
    r = admin.post(f"/keys/{kid}", {"name": "new-name", "owner_id": str(member_id), "rate_limit_per_minute": "5",
                                    "expires_at": ""})
    assert r.status_code == 303
    key = one(app, VirtualKey, id=kid)
    assert (key.name, key.owner_id, key.rate_limit_per_minute) == ("new-name", member_id, 5)
    r = admin.post(f"/keys/{kid}", {"name": "new-name", "owner_id": "", "rate_limit_per_minute": "-1",
                                    "expires_at": ""})
    assert r.status_code == 422 and 'id="rate_limit_per_minute-error"' in text(r)
    assert one(app, VirtualKey, id=kid).rate_limit_per_minute == 5
    # an expiry in the past blocks nothing as long as it is left as it is
    with app.app_context():
        db.session.get(VirtualKey, kid).expires_at = datetime(2020, 5, 1, 8, 30)
        db.session.commit()
    page = text(admin.get(f"/keys/{kid}"))
    assert 'value="2020-05-01T08:30"' in page and "expired" in page
    r = admin.post(f"/keys/{kid}", {"name": "renamed", "owner_id": "", "rate_limit_per_minute": "5",
                                    "expires_at": "2020-05-01T08:30"})
    assert r.status_code == 303
    key = one(app, VirtualKey, id=kid)
    assert key.name == "renamed" and key.owner_id is None and key.expires_at == datetime(2020, 5, 1, 8, 30)
    r = admin.post(f"/keys/{kid}", {"name": "renamed", "rate_limit_per_minute": "5", "expires_at": ""})
    assert r.status_code == 303 and one(app, VirtualKey, id=kid).expires_at is None


def test_grants_editor_saves_grants(app, client, admin, admin_id):
    with_tools = new_server(app, "tooled", tools=[{"name": "echo"}, {"name": "add"}, {"name": "search"}])
    plain = new_server(app, "plain", tools=[])  # as if its tools were not discovered yet
    other = new_server(app, "other")
    svc = new_service(app)
    kid = new_key(app, "agent")

    page = text(admin.get(f"/keys/{kid}"))
    assert f'name="tools:{with_tools}" value="echo"' in page  # discovered tools: checkboxes
    assert f'name="tools_text:{plain}"' in page  # none discovered: a text field
    assert f'name="scope:{svc}"' in page

    r = admin.post(f"/keys/{kid}/grants", {
        "server": [str(with_tools), str(plain), str(other)],
        f"tools:{with_tools}": ["echo", "search"], f"tools_text:{plain}": "list_issues, get_issue",
        f"tools_text:{other}": "",
        "service": [str(svc)], f"scope:{svc}": "write"}, htmx=True)
    assert r.status_code == 200
    body = text(r)
    assert "Grants saved." in body and 'id="grants"' in body and "<html" not in body

    api = Api(client, token_for(app, admin_id))
    got = api.get(f"/virtual-keys/{kid}").json
    assert got["mcp_servers"] == [{"server_id": with_tools, "tools": ["echo", "search"]},
                                  {"server_id": plain, "tools": ["get_issue", "list_issues"]},
                                  {"server_id": other, "tools": None}]
    assert got["services"] == [{"service_id": svc, "scope": "write"}]

    # the page shows what is stored
    page = text(admin.get(f"/keys/{kid}"))
    assert f'name="tools:{with_tools}" value="echo" checked' in page
    assert f'name="tools:{with_tools}" value="add">' in page
    assert 'value="get_issue, list_issues"' in page

    # unticking removes; a non-htmx post redirects back to the page
    r = admin.post(f"/keys/{kid}/grants", {"server": [str(other)]})
    assert r.status_code == 303 and r.headers["Location"] == f"/keys/{kid}"
    got = api.get(f"/virtual-keys/{kid}").json
    assert got["mcp_servers"] == [{"server_id": other, "tools": None}] and got["services"] == []
    assert "virtual_key.update" in text(admin.get("/audit"))

    # bad input is refused by the ops layer and shown in the fragment, nothing changes
    r = admin.post(f"/keys/{kid}/grants", {"server": ["9999"], "service": [str(svc)], f"scope:{svc}": "admin"},
                   htmx=True)
    assert r.status_code == 422
    assert "unknown server id(s): 9999" in text(r) and "<html" not in text(r)
    assert api.get(f"/virtual-keys/{kid}").json["mcp_servers"] == [{"server_id": other, "tools": None}]


def test_revoke_from_list_swaps_the_row(app, admin):
    kid = new_key(app, "to-revoke")
    listing = text(admin.get("/keys"))
    assert f'id="key-{kid}"' in listing and 'hx-target="closest tr"' in listing and "hx-confirm" in listing
    r = admin.post(f"/keys/{kid}/revoke", htmx=True)
    assert r.status_code == 200
    row = text(r)
    assert row.strip().startswith("<tr") and f'id="key-{kid}"' in row and "revoked" in row
    assert "Revoke</button>" not in row and "<html" not in row
    assert not one(app, VirtualKey, id=kid).active
    assert one(app, AuditEvent, action="virtual_key.revoke") is not None

    # from the key page: back to the page
    kid2 = new_key(app, "other")
    r = admin.post(f"/keys/{kid2}/revoke?where=page", htmx=True)
    assert r.headers["HX-Redirect"] == f"/keys/{kid2}"
    assert "revoked" in text(admin.get(f"/keys/{kid2}"))


def test_key_delete(app, member, member_id):
    kid = new_key(app, "mine", owner_id=member_id)
    r = member.post(f"/keys/{kid}/delete", htmx=True)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == "/keys"
    assert one(app, VirtualKey, id=kid) is None


# --- audit log and fragments --------------------------------------------------------------------

def test_audit_page_lists_and_searches(app, admin):
    new_server(app, "gh")
    for i in range(55):
        new_key(app, f"k{i}")
    page = text(admin.get("/audit"))
    assert "virtual_key.create" in page and "Page 1 of 2" in page
    # newest first: the last key created is on page 1; the login and the server (older) on page 2
    assert "k54" in page and "mcp_server.create" not in page and "login.success" not in page
    page2 = text(admin.get("/audit?page=2", htmx=True))
    assert "mcp_server.create" in page2 and "login.success" in page2 and "admin@example.com" in page2
    assert "<html" not in page2
    found = text(admin.get("/audit?q=mcp_server", htmx=True))
    assert "mcp_server.create" in found and "login.success" not in found and 'id="audit-table"' in found
    assert "gh" in text(admin.get("/audit?q=gh"))


@pytest.mark.parametrize("path, marker", [("/servers", 'id="servers-table"'), ("/services", 'id="services-table"'),
                                          ("/keys", 'id="keys-table"'), ("/users", 'id="users-table"'),
                                          ("/audit", 'id="audit-table"')])
def test_htmx_gets_fragments(admin, path, marker):
    full = admin.get(path)
    assert "<html" in text(full) and marker in text(full) and 'class="topbar"' in text(full)
    part = admin.get(path + "?q=", htmx=True)
    assert part.status_code == 200 and marker in text(part)
    assert "<html" not in text(part) and 'class="topbar"' not in text(part)
    assert "HX-Request" in part.headers.get("Vary", "")
    # a history restore (htmx cache miss) needs the whole page
    restore = admin.client.get(path, headers={**HX, "HX-History-Restore-Request": "true"})
    assert "<html" in text(restore)
