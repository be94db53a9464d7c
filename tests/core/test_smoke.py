import pytest

from tests.support.mcp import mcp_url

pytestmark = pytest.mark.usefixtures("real_upstream")  # servers are discovered when created


def test_token_and_create_server(admin_api, anon_api, client):
    r = client.post("/api/v1/tokens", json={"email": "admin@example.com", "password": "correct horse battery"})
    assert r.status_code == 201, r.json
    assert r.json["token"].startswith("pct_")
    r = admin_api.post("/mcp-servers", json={"name": "gh", "url": mcp_url(), "auth_type": "headers",
                                             "headers": {"X-Api-Key": "canary-123"}})
    assert r.status_code == 201, r.json
    assert r.json["headers"] == ["X-Api-Key"]
    assert "canary-123" not in r.get_data(as_text=True)
    assert anon_api.get("/mcp-servers").status_code == 401
