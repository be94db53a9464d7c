"""The dashboard as a logged-in person uses it, through the test client with CSRF on (as in
production): ``Web`` posts forms with the token taken from a page; readers of the answers."""
from __future__ import annotations

import re

from tests.conftest import PASSWORD

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
HX = {"HX-Request": "true"}


def csrf_in(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no csrf_token in the page"
    return match.group(1)


class Web:
    """A logged-in dashboard user: posts forms with the CSRF token taken from a page."""

    def __init__(self, client):
        self.client, self.token = client, None

    def login(self, email: str, password: str = PASSWORD):
        token = csrf_in(self.client.get("/login").get_data(as_text=True))
        r = self.client.post("/login", data={"email": email, "password": password, "csrf_token": token})
        assert r.status_code == 302, r.get_data(as_text=True)
        # the login starts a fresh session: take the new token from a page
        self.token = csrf_in(self.client.get("/keys").get_data(as_text=True))
        return self

    def get(self, path: str, htmx: bool = False, **kw):
        return self.client.get(path, headers=HX if htmx else {}, **kw)

    def post(self, path: str, data: dict | None = None, htmx: bool = False, **kw):
        data = dict(data or {})
        data.setdefault("csrf_token", self.token)
        return self.client.post(path, data=data, headers=HX if htmx else {}, **kw)


def text(r) -> str:
    return r.get_data(as_text=True)


def ok(r) -> str:
    """A page that was served (200): a secret's absence from an error page would prove nothing."""
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"))
    return text(r)
