"""Helpers for the JSON API tests.

The ``admin_api``, ``member_api`` and ``anon_api`` fixtures here wrap the ones from conftest:
every answer they get is checked against /api/v1/openapi.json (the status code must be
documented for that operation and the body must validate against the documented schema), so
each API test also tests the OpenAPI document. Import them into a test module to use them:

    from tests.support.api import admin_api, anon_api, member_api  # noqa: F401
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from app.api.openapi import DOCUMENT
from app.extensions import db
from app.models import AuditEvent
from tests.conftest import PASSWORD, Api

PREFIX = "/api/v1"
DOC_URI = "urn:portcullis:openapi"
_registry = Registry().with_resource(DOC_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))
_validators: dict[str, Draft202012Validator] = {}


def openapi_path(rule: str) -> str:
    """A werkzeug rule under /api/v1 in OpenAPI syntax: /api/v1/users/<int:user_id> -> /users/{user_id}."""
    assert rule.startswith(PREFIX)
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule[len(PREFIX):])


def validator_for(pointer: str) -> Draft202012Validator:
    """A validator for the schema at a JSON pointer in the document, e.g. /components/schemas/User."""
    if pointer not in _validators:
        _validators[pointer] = Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=_registry,
                                                    format_checker=FormatChecker())
    return _validators[pointer]


def validate(instance, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` fits components/schemas/<schema_name>."""
    validator_for(f"/components/schemas/{schema_name}").validate(instance)


def _deref(node: dict) -> dict:
    while "$ref" in node:
        node = _registry.resolver().lookup(DOC_URI + node["$ref"]).contents
    return node


def check_against_doc(app, method: str, path: str, resp) -> None:
    """Assert that ``resp`` is an answer the OpenAPI document allows for ``method path``."""
    route = path.split("?", 1)[0]
    adapter = app.url_map.bind("localhost")
    try:
        rule, _args = adapter.match(route, method=method, return_rule=True)
    except HTTPException as e:  # no such route / method: still a JSON error under /api/v1
        assert resp.status_code == e.code, (resp.status_code, resp.get_data(as_text=True))
        validate(resp.get_json(), "Error")
        return
    operation = DOCUMENT["paths"][openapi_path(rule.rule)][method.lower()]
    status = str(resp.status_code)
    assert status in operation["responses"], (
        f"{method} {rule.rule} answered {status}, which the OpenAPI document does not list: "
        f"{resp.get_data(as_text=True)[:300]}")
    documented = _deref(operation["responses"][status])
    for header in documented.get("headers", {}):
        assert header in resp.headers, f"{method} {rule.rule} {status} lacks the {header} header"
    content = documented.get("content")
    if content is None:
        assert resp.get_data() == b"", f"{method} {rule.rule} {status} should have no body"
        return
    assert resp.mimetype == "application/json"
    schema = content["application/json"]["schema"]
    if "$ref" in schema:
        validator_for(schema["$ref"][1:]).validate(resp.get_json())


class CheckedApi:
    """Wraps conftest's Api; every answer is checked against the OpenAPI document.

    ``mcp_url`` is a real upstream MCP server: enabled none/headers servers are contacted
    when created or changed, and refused when unreachable."""

    def __init__(self, api, mcp_url: str | None = None):
        self.api, self.mcp_url = api, mcp_url
        self.client = api.client
        self.app = api.client.application

    @property
    def token(self):
        return self.api.token

    def _call(self, method, path, **kw):
        resp = getattr(self.api, method)(path, **kw)
        check_against_doc(self.app, method.upper(), PREFIX + path, resp)
        return resp

    def get(self, path, **kw):
        return self._call("get", path, **kw)

    def delete(self, path, **kw):
        return self._call("delete", path, **kw)

    def post(self, path, json=None, **kw):
        return self._call("post", path, json=json, **kw)

    def patch(self, path, json=None, **kw):
        return self._call("patch", path, json=json, **kw)

    def put(self, path, json=None, **kw):
        return self._call("put", path, json=json, **kw)


@pytest.fixture
def admin_api(admin_api, upstreams):
    return CheckedApi(admin_api, upstreams["alpha"])


@pytest.fixture
def member_api(member_api, upstreams):
    return CheckedApi(member_api, upstreams["alpha"])


@pytest.fixture
def anon_api(anon_api, upstreams):
    return CheckedApi(anon_api, upstreams["alpha"])


# --- looking at the database ------------------------------------------------------------

def count(app, model, *where) -> int:
    with app.app_context():
        q = select(func.count()).select_from(model)
        for w in where:
            q = q.where(w)
        n = db.session.scalar(q)
        db.session.remove()
        return n


def audit_actions(app) -> list[str]:
    """Every audit action so far, oldest first."""
    with app.app_context():
        actions = list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
        db.session.remove()
        return actions


def last_event(app) -> AuditEvent:
    """The newest audit event, detached from any session."""
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        db.session.expunge(event)
        return event


def detached(app, model, row_id):
    """A row as the database has it (decrypted), detached from any session."""
    with app.app_context():
        row = db.session.get(model, row_id)
        db.session.expunge(row)
        return row


@contextmanager
def unchanged(admin_api, *paths):
    """Assert that the listed GET answers are byte-for-byte the same after the block."""
    before = [admin_api.get(p).get_json() for p in paths]
    n_audit = admin_api.get("/audit-events?limit=1").get_json()["total_count"]
    yield
    assert [admin_api.get(p).get_json() for p in paths] == before
    assert admin_api.get("/audit-events?limit=1").get_json()["total_count"] == n_audit, "a failed call was audited"


def assert_error(resp, status: int, code: str | None = None, fields: set | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    err = resp.get_json()["error"]
    if code:
        assert err["code"] == code, err
    if fields is not None:
        assert set(err.get("fields", {})) == fields, err
    return err


# --- ready-made objects -----------------------------------------------------------------

def with_samples(fields: dict) -> dict:
    """A per_user_headers server is verified with sample values (the test upstream at mcp_url
    takes any): add one per key unless the test chose its own."""
    keys = fields.get("per_user_header_keys")
    if fields.get("auth_type") != "per_user_headers" or "sample_headers" in fields or not isinstance(keys, list):
        return fields
    clean = [k.strip().lower() for k in keys if isinstance(k, str)]
    if len(clean) != len(keys) or len(set(clean)) != len(clean) or not all(re.match(r"^[a-z0-9-]+$", k) for k in clean):
        return fields  # invalid keys: the test is about the keys
    return {**fields, "sample_headers": {k: "sample-value" for k in clean}}


def new_server(api, name="srv", **fields) -> dict:
    body = {"name": name, "url": api.mcp_url, **with_samples(fields)}
    r = api.post("/mcp-servers", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def new_service(api, name="svc", secret="service-secret-value", **fields) -> dict:
    r = api.post("/services", json={"name": name, "base_url": f"https://{name}.example.com/", "secret": secret,
                                    **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def new_key(api, name="agent key", **fields) -> dict:
    r = api.post("/virtual-keys", json={"name": name, **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def new_user(api, email="someone@example.com", password="a-long-password", **fields) -> dict:
    r = api.post("/users", json={"email": email, "password": password, **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


PUBLIC = {"api.create_token", "api.openapi"}  # the endpoints that need no token


def api_rules(app):
    """(method, concrete path, endpoint) for every /api/v1 route, ids set to 999999."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        path = re.sub(r"\{[^}]+\}", "999999", openapi_path(rule.rule))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path, rule.endpoint


def mint(app, client, email: str, password: str = PASSWORD) -> CheckedApi:
    """A token from POST /api/v1/tokens, as a client holding it."""
    r = client.post("/api/v1/tokens", json={"email": email, "password": password})
    check_against_doc(app, "POST", "/api/v1/tokens", r)
    assert r.status_code == 201, r.get_json()
    return CheckedApi(Api(client, r.get_json()["token"]))
