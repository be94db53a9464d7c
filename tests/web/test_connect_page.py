"""/connect/<flow_id>: the page where a person types their header values."""
from __future__ import annotations

import logging
import re
from datetime import timedelta

from sqlalchemy import select, update

from app.extensions import db
from app.models import Flow, McpServer, VirtualKey
from app.models.base import utcnow
from tests.conftest import make_user
from tests.support.mcp import ALICE, BOB, TOKEN_HEADER, Rpc, agent, auth_required, creds, make_server, tool
from tests.support.web import Web

HX = {"HX-Request": "true"}


def test_user_flow_page(app, client, urls, member_id, caplog):
    caplog.set_level(logging.DEBUG)
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    url = auth_required(rpc)["submit_url"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    path = "/" + path
    # not logged in: to the login page and back
    r = app.test_client().get(path)
    assert r.status_code == 302 and "/login" in r.headers["Location"] and "connect" in r.headers["Location"]
    # another user: 403
    make_user(app, "other@example.com")
    assert Web(app.test_client()).login("other@example.com").get(path).status_code == 403
    web = Web(app.test_client()).login("member@example.com")
    page = web.get(path).get_data(as_text=True)
    assert 'name="header:x-api-key"' in page and "keyed" in page and 'type="password"' in page
    assert "<script>" not in page  # no inline script
    # wrong value, htmx: 422 partial with the reason, nothing stored
    r = web.post(path, {"header:x-api-key": "nope-" + ALICE}, htmx=True)
    assert r.status_code == 422 and "401" in r.get_data(as_text=True)
    assert "nope-" + ALICE not in r.get_data(as_text=True)
    assert creds(app) == []
    # right value without JS (plain form post)
    r = web.post(path, {"header:x-api-key": ALICE})
    assert r.status_code == 200 and "retry in your agent now" in r.get_data(as_text=True)
    assert ALICE not in r.get_data(as_text=True)
    assert creds(app) == [("user", "active", ["x-api-key"])]
    assert web.get(path).status_code == 410
    assert tool(rpc)["structuredContent"]["x-api-key"] == ALICE
    assert ALICE not in caplog.text


def test_vk_flow_page_needs_the_token(app, client, urls):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid)
    url = auth_required(rpc)["submit_url"]
    path, token = "/" + url.split("://", 1)[1].split("/", 1)[1].split("#", 1)[0], url.split("#t=", 1)[1]
    c = app.test_client()
    shell = c.get(path)
    assert shell.status_code == 200
    shell = shell.get_data(as_text=True)
    assert "connect.js" in shell and "header:x-api-key" not in shell and token not in shell
    assert c.get(path + "/form", headers={**HX, TOKEN_HEADER: "wrong"}).status_code == 403
    form = c.get(path + "/form", headers={**HX, TOKEN_HEADER: token}).get_data(as_text=True)
    assert "header:x-api-key" in form
    from tests.support.web import csrf_in

    csrf = csrf_in(form)
    r = c.post(path, data={"header:x-api-key": BOB, "csrf_token": csrf}, headers={**HX, TOKEN_HEADER: token})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert tool(rpc)["structuredContent"]["x-api-key"] == BOB
    assert c.get(path).status_code == 410


def whose(form_html: str) -> str:
    """The part of the form that says whose credential the values become; it comes before any field."""
    match = re.search(r'<div class="flash" id="connect-whose">(.*?)</div>', form_html, re.S)
    assert match, form_html
    assert match.start() < form_html.index('type="password"')  # read before a secret is typed
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split())


def vk_link(rpc) -> tuple[str, str]:
    url = auth_required(rpc)["submit_url"]
    return "/" + url.split("://", 1)[1].split("/", 1)[1].split("#", 1)[0], url.split("#t=", 1)[1]


def test_vk_flow_page_names_the_key_its_owner_and_the_server(app, client, urls):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, name="ci-bot")
    path, token = vk_link(rpc)
    c = app.test_client()
    shell = c.get(path)
    assert shell.status_code == 200 and "ci-bot" not in shell.get_data(as_text=True)  # nothing without the token
    form = c.get(path + "/form", headers={**HX, TOKEN_HEADER: token})
    assert form.status_code == 200
    text = whose(form.get_data(as_text=True))
    assert "the virtual key ci-bot (no owner) on the server keyed" in text
    assert "forwarded you this link" in text
    # the key got an owner after the link was made: the page names them
    owner = make_user(app, "owner@example.com")
    with app.app_context():
        db.session.scalar(select(VirtualKey)).owner_id = owner
        db.session.commit()
    form = c.get(path + "/form", headers={**HX, TOKEN_HEADER: token})
    assert form.status_code == 200
    assert "the virtual key ci-bot (owner owner@example.com) on the server keyed" in whose(form.get_data(as_text=True))


def test_session_flow_page_says_a_development_session(app, client, urls):
    sid = make_server(app, urls["one"])
    app.config["PORTCULLIS_ENFORCE_AUTH"] = False
    try:
        with app.app_context():
            db.session.get(McpServer, sid).allow_on_all_virtual_keys = True
            db.session.commit()
        rpc = Rpc(client)
        rpc.initialize()
        path, token = vk_link(rpc)
    finally:
        app.config["PORTCULLIS_ENFORCE_AUTH"] = True
    form = app.test_client().get(path + "/form", headers={**HX, TOKEN_HEADER: token})
    assert form.status_code == 200
    text = whose(form.get_data(as_text=True))
    assert "the credential of a development session" in text and "on the server keyed" in text
    assert "virtual key" not in text and rpc.session not in form.get_data(as_text=True)


def test_user_flow_page_names_the_person(app, client, urls, member_id):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    path = "/connect/" + auth_required(rpc)["flow_id"]
    page = Web(app.test_client()).login("member@example.com").get(path)
    assert page.status_code == 200
    assert "your own credential (member@example.com) on the server keyed" in whose(page.get_data(as_text=True))


def test_expired_flow_page_is_410(app, client, urls, member_id):
    sid = make_server(app, urls["one"])
    rpc = agent(app, client, sid, owner_id=member_id)
    path = "/connect/" + auth_required(rpc)["flow_id"]
    with app.app_context():
        db.session.execute(update(Flow).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    web = Web(app.test_client()).login("member@example.com")
    assert web.get(path).status_code == 410
    assert web.post(path, {"header:x-api-key": ALICE}).status_code == 410
    assert web.get("/connect/unknown").status_code == 404
