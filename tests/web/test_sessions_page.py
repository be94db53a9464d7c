"""The /sessions page through the real app and its test client (CSRF on): who sees what, the htmx
fragments, filters and pages in the URL, revoke, re-authenticate, and connecting a granted server."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Credential, Flow, McpServer, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow
from tests.conftest import make_user
from tests.support.mcp import CANARY, _cred, _key, _server
from tests.support.web import HX, Web, text


def member_web(app):
    return Web(app.test_client()).login("member@example.com")


def admin_web(app):
    return Web(app.test_client()).login("admin@example.com")


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="session-([^"]+)"', html)


def test_login_required(client):
    r = client.get("/sessions")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    r = client.get("/sessions?status=active", headers=HX)
    assert r.headers["HX-Redirect"].startswith("/login?next=")


def test_member_page(app, world):
    w = world
    page = text(member_web(app).get("/sessions"))
    assert row_ids(page) == [w.fid("member_linear")[0:], w.cid("member_linear"), w.cid("memberkey_jira"),
                             w.cid("member_github")]
    assert "other@example.com" not in page and "ci-bot" not in page and w.session not in page
    assert 'href="/sessions" aria-current="page"' in page  # the nav link
    assert 'hx-trigger="input changed delay:300ms, search"' in page and 'hx-push-url="true"' in page
    assert 'data-filter="status=pending"' in page and 'data-filter="auth_mode=vk"' in page
    assert 'data-filter="auth_mode=session"' not in page  # members never see session rows
    assert "Re-authenticate" in page and "hx-confirm=" in page
    assert f'href="/connect/{w.flows["member_linear"]}">Open link</a>' in page  # their own pending flow
    assert CANARY not in page
    # relative times with the exact time on hover
    assert re.search(r'<time datetime="2030-01-01T12:01:00Z" title="2030-01-01 12:01:00 UTC">in \d+ years?</time>',
                     page)


def test_admin_page_and_fragment(app, world):
    w = world
    admin = admin_web(app)
    page = text(admin.get("/sessions"))
    assert len(row_ids(page)) == 8 and 'data-filter="auth_mode=session"' in page
    part = admin.get("/sessions?q=git", htmx=True)
    html = text(part)
    assert "<html" not in html and 'class="topbar"' not in html and 'id="sessions-table"' in html
    assert row_ids(html) == [w.cid("session_github"), w.cid("other_github"), w.cid("member_github")]
    assert "HX-Request" in part.headers.get("Vary", "")
    # filters live in the URL: the chips carry the search, the hidden inputs carry the filters
    html = text(admin.get("/sessions?q=git&status=active", htmx=True))
    assert row_ids(html) == [w.cid("session_github"), w.cid("member_github")]
    assert '<input type="hidden" form="sessions-search" name="status" value="active">' in html
    assert 'class="chip on" href="/sessions?q=git"' in html  # active chip toggles itself off
    assert 'href="/sessions?q=git&amp;status=active,pending"' in html
    # a history restore needs the whole page
    restore = admin.client.get("/sessions?status=active", headers={**HX, "HX-History-Restore-Request": "true"})
    assert "<html" in text(restore)


def test_bad_filter_values_on_the_page_are_ignored(app, world):
    admin = admin_web(app)
    r = admin.get("/sessions?status=bogus,pending&server_id=x&page=abc&auth_mode=root")
    assert r.status_code == 200
    assert row_ids(text(r)) == [world.fid("bot_jira"), world.fid("member_linear")]
    r = admin.get("/sessions?q=ci-bot%00")  # a NUL is dropped, not sent to the database
    assert r.status_code == 200 and row_ids(text(r)) == [world.fid("bot_jira"), world.cid("bot_linear")]
    assert admin.post("/sessions/flow_a%00b/revoke").status_code == 404


def test_pagination_keeps_the_filters(app, world):
    with app.app_context():
        for i in range(25):
            sid = _server(f"extra-{i:02d}")
            _grant(world.keys["member-key"], sid)  # (without access they would be orphaned at once)
            _cred("user", world.member_id, sid, "active", 100 + i)
        db.session.commit()
    member = member_web(app)
    first = text(member.get("/sessions?status=active&q=extra"))
    assert len(row_ids(first)) == 20 and "Page 1 of 2 · 25 sessions" in first
    assert 'href="/sessions?q=extra&amp;status=active&amp;page=2"' in first
    second = text(member.get("/sessions?q=extra&status=active&page=2", htmx=True))
    assert len(row_ids(second)) == 5 and "Page 2 of 2" in second and 'rel="prev"' in second
    assert 'href="/sessions?q=extra&amp;status=active"' in second  # previous = page 1, filters kept
    assert not set(row_ids(first)) & set(row_ids(second))
    # past the end: the last page
    assert "Page 2 of 2" in text(member.get("/sessions?q=extra&status=active&page=9"))


def test_revoke_in_place(app, world):
    w = world
    member = member_web(app)
    r = member.post(f"/sessions/{w.cid('member_linear')}/revoke", htmx=True)
    assert r.status_code == 200
    row = text(r)
    assert row.strip().startswith("<tr") and f'id="session-{w.cid("member_linear")}"' in row and "Revoked" in row
    assert "<html" not in row and "Revoke</button>" not in row
    with app.app_context():
        assert db.session.get(Credential, w.creds["member_linear"]) is None
        assert db.session.get(Flow, w.flows["member_linear"]) is None
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "session.revoke")) is not None
    # not theirs: not found, nothing changed
    for row_id in (w.cid("other_github"), w.cid("session_github"), w.fid("bot_jira")):
        assert member.post(f"/sessions/{row_id}/revoke", htmx=True).status_code == 404
    # without the CSRF token: refused
    r = member.client.post(f"/sessions/{w.cid('member_github')}/revoke")
    assert r.status_code == 400
    with app.app_context():
        assert db.session.get(Credential, w.creds["member_github"]) is not None
    # without htmx: back to the list with a message
    r = member.post(f"/sessions/{w.cid('member_github')}/revoke")
    assert r.status_code == 303 and r.headers["Location"] == "/sessions"
    assert "Revoked: github" in text(member.get("/sessions"))


def test_reauth_goes_to_the_submission_page(app, world):
    w = world
    member = member_web(app)
    r = member.post(f"/sessions/{w.cid('member_github')}/reauth")
    assert r.status_code == 303 and r.headers["Location"] == f"/connect/{w.flows['member_github']}"
    form = member.get(r.headers["Location"])
    assert form.status_code == 200 and 'name="header:x-api-key"' in text(form)
    r = member.post(f"/sessions/{w.cid('member_linear')}/reauth", htmx=True)
    assert r.headers["HX-Redirect"] == f"/connect/{w.flows['member_linear']}"
    r = member.post(f"/sessions/{w.cid('memberkey_jira')}/reauth")  # orphaned
    assert r.status_code == 403 and "orphaned" in text(r)
    assert member.post(f"/sessions/{w.cid('other_github')}/reauth").status_code == 404
    admin = admin_web(app)
    assert admin.post(f"/sessions/{w.cid('member_github')}/reauth").status_code == 403  # not theirs to submit
    r = admin.post(f"/sessions/{w.cid('bot_linear')}/reauth")
    assert r.status_code == 303 and re.fullmatch(r"/connect/[\w-]+#t=[\w-]+", r.headers["Location"])


def test_empty_state_explains_where_credentials_come_from(app, world):
    make_user(app, "new@example.com")
    page = text(Web(app.test_client()).login("new@example.com").get("/sessions"))
    assert row_ids(page) == []
    assert "No credentials yet" in page and "Connect" in page and "per_user_headers" in page
    assert "No session matches" in text(admin_web(app).get("/sessions?q=nothing-like-this"))


def _grant(key_id, server_id):
    db.session.add(VirtualKeyServerGrant(virtual_key_id=key_id, mcp_server_id=server_id))


def test_connect_a_granted_server(app, world):
    w = world
    with app.app_context():
        granted = _server("granted")           # explicit grant on the member's key
        everyone = _server("everyone")         # allow-all
        db.session.get(McpServer, everyone).allow_on_all_virtual_keys = True
        off = _server("switched-off")          # granted but disabled
        db.session.get(McpServer, off).enabled = False
        shared = _server("shared", "none")     # not per-user
        foreign = _server("foreign")           # granted to someone else's key only
        _grant(w.keys["member-key"], granted)
        _grant(w.keys["member-key"], off)
        _grant(w.keys["member-key"], shared)
        _grant(w.keys["other-key"], foreign)
        expired = _key("expired-key", w.member_id)
        db.session.get(VirtualKey, expired).expires_at = utcnow() - timedelta(minutes=1)
        _grant(expired, _server("via-expired"))
        db.session.commit()
    member = member_web(app)
    page = text(member.get("/sessions"))
    section = page[page.index('id="connect"'):]
    assert re.findall(r"Connect ([\w-]+)</button>", section) == ["everyone", "granted"]
    r = member.post("/sessions/connect", {"server_id": str(granted)})
    assert r.status_code == 303
    with app.app_context():
        flow = db.session.scalar(select(Flow).where(Flow.mcp_server_id == granted))
        assert (flow.auth_mode, flow.user_id, flow.status) == ("user", w.member_id, "pending")
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "session.connect")).target == "granted"
    assert r.headers["Location"] == f"/connect/{flow.id}"
    assert 'name="header:x-api-key"' in text(member.get(r.headers["Location"]))
    # the new pending flow is listed, and connect stays offered until a credential exists
    assert f"flow_{flow.id}" in row_ids(text(member.get("/sessions")))
    for bad in (str(off), str(shared), str(foreign), str(w.servers["github"]), "999", "x", ""):
        assert member.post("/sessions/connect", {"server_id": bad}).status_code == 404, bad
