"""No input is a 500: what a client sends that the app cannot take is a clear 4xx and changes
nothing (ids beyond what the database holds, JSON nested deeper than anything real, header values
HTTP cannot carry). tests/test_fuzz.py looks for more of these at random."""
from __future__ import annotations

import re

import pytest
from werkzeug.routing import IntegerConverter

from app import IdConverter
from app.ops.fields import MAX_ID
from tests.api_helpers import PREFIX

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
