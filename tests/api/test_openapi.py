"""The OpenAPI document at /api/v1/openapi.json: valid OpenAPI 3.1, and it matches the routes."""
import pytest
from jsonschema import ValidationError
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

from tests.support.api import PREFIX, admin_api, anon_api, member_api, new_key, new_server, new_service  # noqa: F401
from tests.support.api import openapi_path, validate

IGNORED = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def doc(client):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    return r.get_json()


def api_routes(app) -> dict[tuple[str, str], str]:
    """{(OpenAPI path, method): endpoint} for every route under /api/v1."""
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.rule == PREFIX or rule.rule.startswith(PREFIX + "/"):
            for method in rule.methods - IGNORED:
                key = (openapi_path(rule.rule), method.lower())
                assert key not in routes, f"two rules for {key}"
                routes[key] = rule.endpoint
    return routes


def doc_operations(doc) -> dict[tuple[str, str], dict]:
    return {(path, method): operation for path, item in doc["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS}


def test_public_without_a_token(anon_api):
    assert anon_api.get("/openapi.json").status_code == 200


def test_is_valid_openapi_3_1(doc):
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["paths"] and doc["components"]["schemas"]
    validate_spec(doc, cls=OpenAPIV31SpecValidator)  # the official 3.1 schema plus reference checks


def test_bearer_security_scheme(doc):
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearerAuth": []}]
    public = {op["operationId"] for op in doc_operations(doc).values() if op.get("security") == []}
    assert public == {"create_token", "openapi"}


def test_every_route_is_documented_with_exactly_its_methods(app, doc):
    routes = api_routes(app)
    operations = doc_operations(doc)
    assert set(routes) == set(operations), (
        f"undocumented: {sorted(set(routes) - set(operations))}; "
        f"documented but not routed: {sorted(set(operations) - set(routes))}")
    for key, endpoint in routes.items():
        assert operations[key]["operationId"] == endpoint.split(".", 1)[1], key


def test_public_operations_are_the_public_endpoints(app, doc):
    from app.api import PUBLIC

    public = {"api." + op["operationId"] for op in doc_operations(doc).values() if op.get("security") == []}
    assert public == PUBLIC


def test_path_parameters_match_the_rules(app, doc):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        item = doc["paths"][openapi_path(rule.rule)]
        declared = {p["name"] for p in item.get("parameters", []) if p.get("in") == "path"}
        assert declared == set(rule.arguments), rule.rule
        from werkzeug.routing import IntegerConverter

        for p in item.get("parameters", []):
            if p.get("in") != "path":
                continue
            integer = isinstance(rule._converters[p["name"]], IntegerConverter)
            assert p["required"] is True and p["schema"]["type"] == ("integer" if integer else "string")


def test_operations_document_their_errors(doc):
    for (path, method), op in doc_operations(doc).items():
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), (path, method)
        if op.get("security") != []:
            assert "401" in responses, (path, method)
            assert "403" in responses, (path, method)  # at least password_change_required
        if op["operationId"].startswith(("create_", "update_")):
            assert {"400", "422"} <= set(responses), (path, method)
            assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith(
                "#/components/schemas/")
        if "{" in path:
            assert "404" in responses, (path, method)
        if method == "get" and "{" not in path and path not in ("/openapi.json",):
            names = {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in op["parameters"]}
            assert {"limit", "offset"} <= names, path


def test_components_cover_the_resources(doc):
    schemas = doc["components"]["schemas"]
    for name in ("User", "McpServer", "VirtualKey", "VirtualKeyCreated", "Service", "AuditEvent", "Error",
                 "UserList", "McpServerList", "VirtualKeyList", "ServiceList", "AuditEventList", "ApiTokenList"):
        assert name in schemas, name
    for name, items in (("UserList", "users"), ("McpServerList", "mcp_servers"),
                        ("VirtualKeyList", "virtual_keys"), ("ServiceList", "services"),
                        ("AuditEventList", "audit_events"), ("ApiTokenList", "tokens")):
        assert set(schemas[name]["required"]) == {items, "count", "total_count", "limit", "offset"}
    # write-only secrets are in the request schemas and absent from the answers
    assert "key" in schemas["VirtualKeyCreated"]["properties"]
    assert "key" not in schemas["VirtualKey"]["properties"]
    assert schemas["ServiceCreate"]["properties"]["secret"]["writeOnly"] is True
    assert "secret" not in schemas["Service"]["properties"]
    assert schemas["McpServerCreate"]["properties"]["headers"]["writeOnly"] is True
    assert "token" not in schemas["ApiToken"]["properties"] and schemas["ApiToken"]["additionalProperties"] is False


def test_schemas_reject_secrets_in_answers():
    """The answer schemas are closed, so the answer checks in every API test would catch a leak."""
    key = {"id": 1, "name": "k", "key_prefix": "vk_abcdefgh", "owner_id": None, "source": "api",
           "agent_id": None, "mcp_servers": [], "services": [], "rate_limit_per_minute": 60,
           "expires_at": None, "active": True, "status": "active", "created_at": "2030-01-01T00:00:00Z",
           "updated_at": "2030-01-01T00:00:00Z", "last_used_at": None}
    validate(key, "VirtualKey")
    with pytest.raises(ValidationError):
        validate({**key, "key": "vk_secret"}, "VirtualKey")
    validate({**key, "key": "vk_secret"}, "VirtualKeyCreated")
    with pytest.raises(ValidationError):
        validate(key, "VirtualKeyCreated")


def test_real_answers_match_the_component_schemas(admin_api, member_api, client):
    """Objects with every optional part filled in (grants, OAuth settings, owner, expiry)."""
    server = new_server(admin_api, "oauthy", auth_type="oauth",
                        oauth={"client_id": "cid", "client_secret": "s3cret-client", "scopes": "read write",
                               "authorization_server": "https://auth.example.com"})
    validate(server, "McpServerCreated")
    assert server["connect_url"] and server["tools_discovered"] is False  # an OAuth server: where to consent
    validate(admin_api.get(f"/mcp-servers/{server['id']}").get_json(), "McpServer")
    assert server["oauth"]["client_secret_set"] is True
    service = new_service(admin_api, "weather")
    member = admin_api.get("/users?q=member").get_json()["users"][0]
    key = new_key(admin_api, "full", owner_id=member["id"], agent_id="agent-7", expires_at="2999-01-01T00:00:00Z",
                  mcp_servers=[{"server_id": server["id"], "tools": ["a", "b"]}],
                  services=[{"service_id": service["id"], "scope": "write"}])
    validate(key, "VirtualKeyCreated")
    for path, schema in (("/users", "UserList"), ("/mcp-servers", "McpServerList"), ("/services", "ServiceList"),
                         ("/virtual-keys", "VirtualKeyList"), ("/audit-events", "AuditEventList")):
        validate(admin_api.get(path).get_json(), schema)
    validate(member_api.get(f"/virtual-keys/{key['id']}").get_json(), "VirtualKey")
    r = client.post("/api/v1/tokens", json={"email": "member@example.com", "password": "correct horse battery"})
    validate(r.get_json(), "Token")


def test_document_is_cached(client):
    from app.api import openapi

    first = client.get("/api/v1/openapi.json").get_json()
    assert first == client.get("/api/v1/openapi.json").get_json() == openapi.DOCUMENT
