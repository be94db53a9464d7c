"""/api/v1/services: HTTP APIs for the proxy route; the root secret is write-only."""
from __future__ import annotations

import pytest

from app.models import Service
from tests.support.api import admin_api  # noqa: F401 (answers checked against the OpenAPI document)
from tests.support.api import assert_error, audit_actions, count, detached, last_event, new_key, new_service, unchanged

SECRET = "sk-live-0123456789abcdef"


def stored(app, service_id) -> Service:
    return detached(app, Service, service_id)



def create(admin_api, **fields):
    return admin_api.post("/services", json={"name": "weather", "base_url": "https://api.weather.example/v2",
                                             "secret": SECRET, **fields})


def test_create(app, admin_api):
    r = create(admin_api)
    assert r.status_code == 201
    body = r.get_json()
    assert {k: body[k] for k in ("name", "description", "base_url", "credential_header", "secret_set")} == {
        "name": "weather", "description": "", "base_url": "https://api.weather.example/v2",
        "credential_header": "X-API-Key", "secret_set": True}
    assert SECRET not in r.get_data(as_text=True)
    assert admin_api.get(f"/services/{body['id']}").get_json() == body
    assert stored(app, body["id"]).secret == SECRET
    event = last_event(app)
    assert (event.action, event.target, event.detail) == ("service.create", "weather", "credential_header=X-API-Key")


@pytest.mark.parametrize("header,sent", [("Authorization", ("Authorization", f"Bearer {SECRET}")),
                                         ("authorization", ("Authorization", f"Bearer {SECRET}")),
                                         ("X-Token", ("X-Token", SECRET)), ("api-key", ("api-key", SECRET))])
def test_credential_header(app, admin_api, header, sent):
    body = create(admin_api, credential_header=header, description="Forecasts").get_json()
    assert (body["credential_header"], body["description"]) == (header, "Forecasts")
    assert stored(app, body["id"]).credential() == sent


def test_secret_is_kept_exactly(app, admin_api):
    body = create(admin_api, secret="  spaced secret  ").get_json()
    assert stored(app, body["id"]).secret == "  spaced secret  "


@pytest.mark.parametrize("payload,bad", [
    ({"name": None, "base_url": None, "secret": None}, {"name", "base_url", "secret"}),
    ({"name": "Weather"}, {"name"}), ({"name": "1st"}, {"name"}), ({"name": "a" * 41}, {"name"}),
    ({"base_url": "ftp://x.example"}, {"base_url"}), ({"base_url": "x.example"}, {"base_url"}),
    ({"base_url": "https://u:p@x.example"}, {"base_url"}), ({"base_url": 5}, {"base_url"}),
    ({"secret": ""}, {"secret"}), ({"secret": "   "}, {"secret"}), ({"secret": 12345}, {"secret"}),
    ({"secret": "x" * 8193}, {"secret"}), ({"secret": "two\nlines"}, {"secret"}),
    ({"credential_header": "Bad Header"}, {"credential_header"}), ({"credential_header": ""}, {"credential_header"}),
    ({"credential_header": "Host"}, {"credential_header"}),
    ({"credential_header": "content-type"}, {"credential_header"}),
    ({"credential_header": 1}, {"credential_header"}), ({"description": None}, {"description"}),
    ({"description": "d" * 501}, {"description"}), ({"secret_set": True}, {"secret_set"}),
])
def test_create_invalid(app, admin_api, payload, bad):
    with unchanged(admin_api, "/services"):
        assert_error(create(admin_api, **payload), 422, "validation_failed", bad)
    assert count(app, Service) == 0


def test_missing_fields(admin_api):
    assert_error(admin_api.post("/services", json={}), 422, "validation_failed", {"name", "base_url", "secret"})


def test_duplicate_name(app, admin_api):
    new_service(admin_api, "weather")
    with unchanged(admin_api, "/services"):
        err = assert_error(create(admin_api, secret="other"), 409, "conflict")
    assert err["fields"] == {"name": "is already taken"}
    assert count(app, Service) == 1


def test_list_and_search(admin_api):
    for name in ("tickets", "maps", "mail"):
        new_service(admin_api, name)
    body = admin_api.get("/services").get_json()
    assert [s["name"] for s in body["services"]] == ["mail", "maps", "tickets"]
    found = admin_api.get("/services?q=MA").get_json()
    assert [s["name"] for s in found["services"]] == ["mail", "maps"]
    listing = admin_api.get("/services")
    assert listing.status_code == 200 and listing.get_json()["services"]
    assert "service-secret-value" not in listing.get_data(as_text=True)


def test_get_unknown(admin_api):
    assert_error(admin_api.get("/services/999999"), 404, "not_found")


def test_update(app, admin_api):
    service = new_service(admin_api, "old")
    r = admin_api.patch(f"/services/{service['id']}", json={
        "name": "new", "description": "d", "base_url": "http://127.0.0.1:9000/", "credential_header": "Authorization"})
    assert r.status_code == 200
    body = r.get_json()
    assert (body["name"], body["description"], body["base_url"], body["credential_header"]) == (
        "new", "d", "http://127.0.0.1:9000/", "Authorization")
    assert admin_api.get(f"/services/{service['id']}").get_json() == body
    assert last_event(app).detail == "changed name, description, base_url, credential_header"
    assert stored(app, service["id"]).secret == "service-secret-value"  # kept when not given


def test_rotate_secret(app, admin_api):
    service = new_service(admin_api, "svc")
    r = admin_api.patch(f"/services/{service['id']}", json={"secret": "rotated-secret-2"})
    assert r.status_code == 200 and "rotated-secret-2" not in r.get_data(as_text=True)
    assert stored(app, service["id"]).secret == "rotated-secret-2"
    event = last_event(app)
    assert (event.action, event.detail) == ("service.update", "changed secret")
    # the same secret again is no change
    assert admin_api.patch(f"/services/{service['id']}", json={"secret": "rotated-secret-2"}).status_code == 200
    assert audit_actions(app).count("service.update") == 1


def test_update_nothing(app, admin_api):
    service = new_service(admin_api, "svc")
    assert admin_api.patch(f"/services/{service['id']}", json={}).get_json() == service
    assert admin_api.patch(f"/services/{service['id']}", json={"name": "svc"}).status_code == 200
    assert audit_actions(app) == ["service.create"]


@pytest.mark.parametrize("payload,bad", [
    ({"name": "Bad"}, {"name"}), ({"name": ""}, {"name"}), ({"base_url": ""}, {"base_url"}),
    ({"secret": ""}, {"secret"}), ({"secret": None}, {"secret"}), ({"credential_header": "Connection"},
                                                                   {"credential_header"}),
    ({"name": "fine", "secret": 5}, {"secret"}), ({"id": 3}, {"id"}),
])
def test_update_invalid_changes_nothing(app, admin_api, payload, bad):
    service = new_service(admin_api, "svc")
    with unchanged(admin_api, "/services", f"/services/{service['id']}"):
        assert_error(admin_api.patch(f"/services/{service['id']}", json=payload), 422, "validation_failed", bad)
    assert stored(app, service["id"]).secret == "service-secret-value"


def test_update_to_a_taken_name(app, admin_api):
    new_service(admin_api, "taken")
    service = new_service(admin_api, "mine")
    with unchanged(admin_api, "/services"):
        assert_error(admin_api.patch(f"/services/{service['id']}", json={"name": "taken", "secret": "new"}), 409,
                     "conflict")
    assert stored(app, service["id"]).secret == "service-secret-value"


def test_update_unknown(admin_api):
    assert_error(admin_api.patch("/services/999999", json={"description": "x"}), 404, "not_found")


def test_delete_removes_grants(app, admin_api):
    gone = new_service(admin_api, "gone")
    kept = new_service(admin_api, "kept")
    key = new_key(admin_api, services=[{"service_id": gone["id"], "scope": "write"}, {"service_id": kept["id"]}])
    r = admin_api.delete(f"/services/{gone['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    assert_error(admin_api.get(f"/services/{gone['id']}"), 404)
    assert admin_api.get(f"/virtual-keys/{key['id']}").get_json()["services"] == [
        {"service_id": kept["id"], "scope": "read"}]
    event = last_event(app)
    assert (event.action, event.target) == ("service.delete", "gone")
    assert_error(admin_api.delete(f"/services/{gone['id']}"), 404)


def test_delete_unknown(admin_api):
    with unchanged(admin_api, "/services"):
        assert_error(admin_api.delete("/services/999999"), 404, "not_found")
