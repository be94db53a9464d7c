"""Moving a team: `flask --app wsgi export` from this instance, `import` into a fresh one (real
commands); the same keys and passwords work there, no secret travels, and a refused document
changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.extensions import db
from tests.conftest import PASSWORD, make_user
from tests.support.mcp import UPSTREAM_KEY, Rpc, add_server
from tests.support.proxy import ROOT_SECRET, add_service
from app.ops.keys import create_key

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
SHARED_VALUE = UPSTREAM_KEY  # what beta requires


def _flask(env, *args, input=None):
    return subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, input=input)


@pytest.fixture
def fresh(tmp_path):
    """A new instance as `make run` leaves it (migrated, first admin and signing key), not serving."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                                            "PORTCULLIS_ENCRYPTION_KEY")}
    env.update(PORTCULLIS_INSTANCE_PATH=str(tmp_path / "instance"), PORTCULLIS_SWEEP="false")
    for step in (("db", "upgrade"), ("setup",)):
        r = _flask(env, *step)
        assert r.returncode == 0, r.stderr
    return env


def _team(app, upstreams, echo):
    alpha = add_server(app, "alpha", upstreams["alpha"])
    add_server(app, "beta", upstreams["beta"], auth_type="headers", headers={"X-Api-Key": SHARED_VALUE},
               enabled=False)
    svc = add_service(app, "echo", echo)
    member = make_user(app, "member@example.com")
    with app.app_context():
        key, secret = create_key({"name": "agent", "owner_id": member, "rate_limit_per_minute": 77,
                                  "mcp_servers": [{"server_id": alpha, "tools": ["echo"]}],
                                  "services": [{"service_id": svc, "scope": "read"}]}, source="api")
        db.session.commit()
    return secret


def _other_app(env):
    from app import create_app

    secrets = dict(line.split("=", 1) for line in
                   Path(env["PORTCULLIS_INSTANCE_PATH"], "secrets.env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    return create_app({"INSTANCE_PATH": env["PORTCULLIS_INSTANCE_PATH"], "TESTING": True, **secrets})


def test_export_then_import_into_a_fresh_instance_keys_keep_working(app, upstreams, echo, fresh, tmp_path):
    secret = _team(app, upstreams, echo)
    out = app.test_cli_runner().invoke(args=["export"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["format"] == "portcullis-export" and doc["version"] == 1
    text = out.output
    for canary in (ROOT_SECRET, SHARED_VALUE, secret, PASSWORD):
        assert canary not in text  # no secret value; keys and passwords as hashes only
    assert [s["shared_header_names"] for s in doc["mcp_servers"] if s["name"] == "beta"] == [["X-Api-Key"]]
    path = tmp_path / "team.json"
    path.write_text(text)

    r = _flask(fresh, "import", str(path))
    assert r.returncode == 0, r.stderr
    assert "kept the existing user admin@localhost" not in r.stdout  # not in the document
    assert "set again (secrets are never exported): service echo: secret" in r.stdout
    assert "server beta: shared header value(s) X-Api-Key" in r.stdout

    other = _other_app(fresh)
    try:
        rpc = Rpc(other.test_client(), secret)
        rpc.initialize()
        tools = rpc.call("tools/list").json["result"]["tools"]
        assert [t["name"] for t in tools if t["name"].startswith("alpha__")] == ["alpha__echo"]  # its allowlist
        called = rpc.call("tools/call", {"name": "alpha__echo", "arguments": {"text": "moved"}})
        assert called.json["result"]["content"][0]["text"].endswith("moved")
        # the service came without its secret: nothing goes upstream until an admin sets it
        unset = other.test_client().get("/proxy/echo/x", headers={"X-Virtual-Key": secret})
        assert unset.status_code == 503 and unset.json["error"]["code"] == "secret_not_set"
        with other.app_context():
            from app.models import Service
            from app.ops.services import update_service

            assert db.session.scalar(db.select(Service)).to_dict()["secret_set"] is False
            update_service(db.session.scalar(db.select(Service)), {"secret": "set-again-after-the-move"})
            db.session.commit()
        proxied = other.test_client().get("/proxy/echo/x", headers={"X-Virtual-Key": secret})
        assert proxied.status_code == 200
        assert ["X-API-Key", "set-again-after-the-move"] in proxied.json["headers"]
        assert proxied.headers["RateLimit-Limit"] == "77"
        assert other.test_client().get("/proxy/echo/x", headers={"X-Virtual-Key": "vk_" + "x" * 43}).status_code == 401
        with other.app_context():
            from app.models import VirtualKey

            key = db.session.scalar(db.select(VirtualKey))
            assert key.owner.email == "member@example.com" and key.rate_limit_per_minute == 77
            assert key.owner.check_password(PASSWORD)  # the password hash came along
            new, _ = create_key({"name": "after import"}, source="api")  # ids continue after the imported ones
            db.session.commit()
            assert new.id > key.id
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()

    again = _flask(fresh, "import", str(path))
    assert again.returncode != 0 and "import into a fresh one" in again.stderr and "nothing was imported" in again.stderr


def _users(env) -> str:
    return _flask(env, "export").stdout


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=2), "newer Portcullis"),
    (lambda d: d.update(format="something"), "not a Portcullis export"),
    (lambda d: d["virtual_keys"][0].update(owner_id=999), "not a user of the document"),
    (lambda d: d["virtual_keys"][0].update(key_hash="nothex"), "key_hash"),
    (lambda d: d["virtual_keys"][0]["services"][0].update(service_id=999), "database refused"),
    (lambda d: d["mcp_servers"][0].update(enabled="yes"), "wrong type"),
])
def test_a_refused_document_changes_nothing(app, upstreams, echo, fresh, tmp_path, change, message):
    _team(app, upstreams, echo)
    doc = json.loads(app.test_cli_runner().invoke(args=["export"]).output)
    change(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    before = _users(fresh)
    r = _flask(fresh, "import", str(path))
    assert r.returncode != 0 and message in r.stderr and "nothing was imported" in r.stderr, r.stderr
    after = _users(fresh)
    assert json.loads(after)["users"] == json.loads(before)["users"]
    assert json.loads(after)["virtual_keys"] == [] and json.loads(after)["mcp_servers"] == []


def test_import_refuses_what_is_not_json(fresh, tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    r = _flask(fresh, "import", str(path))
    assert r.returncode != 0 and "not JSON" in r.stderr
