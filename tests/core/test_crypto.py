"""Encryption at rest: canaries never stored in plain text, key rotation, unreadable rows."""
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app.crypto import DecryptionError, Keyring
from app.extensions import db
from app.models import McpServer, Service
from tests.support.mcp import mcp_url

pytestmark = pytest.mark.usefixtures("real_upstream")  # servers are discovered when created


CANARY = "canary-7d1e0b5c-secret"


@pytest.fixture
def swap_keys(app):
    """Run part of a test with other encryption keys; restores the app's own keyring."""
    original = app.extensions["keyring"]

    def use(*keys):
        app.extensions["keyring"] = Keyring(list(keys))

    yield use
    app.extensions["keyring"] = original


def raw_dump(app) -> str:
    """Every value of every table, read with plain SQL (no column types, no decryption)."""
    out = []
    with app.app_context():
        with db.engine.connect() as conn:
            for table in db.metadata.sorted_tables:
                for row in conn.execute(text(f"SELECT * FROM {table.name}")):
                    out.append(repr(tuple(row)))
    return "\n".join(out)


def test_secret_columns_are_ciphertext_in_the_database(app, admin_api):
    r = admin_api.post("/services", json={"name": "billing", "base_url": "http://127.0.0.1:9",
                                          "secret": CANARY})
    assert r.status_code == 201
    r = admin_api.post("/mcp-servers", json={"name": "gh", "url": mcp_url(),
                                             "auth_type": "headers", "headers": {"X-Api-Key": CANARY + "-h"}})
    assert r.status_code == 201
    dump = raw_dump(app)
    assert CANARY not in dump
    assert "gAAAAA" in dump  # Fernet tokens are there instead
    with app.app_context():
        assert db.session.scalar(db.select(Service.secret)) == CANARY
        assert db.session.scalar(db.select(McpServer.shared_headers)) == {"X-Api-Key": CANARY + "-h"}


def test_rotation_reencrypts_every_row_under_the_first_key(app, admin_api, encryption_key, swap_keys):
    admin_api.post("/services", json={"name": "billing", "base_url": "http://127.0.0.1:9", "secret": CANARY})
    admin_api.post("/mcp-servers", json={"name": "gh", "url": mcp_url(), "auth_type": "headers",
                                         "headers": {"X-Api-Key": "h1"}})
    new_key = Fernet.generate_key().decode()
    swap_keys(new_key, encryption_key)  # the new key first, the old one still readable
    result = app.test_cli_runner().invoke(args=["rotate-encryption-key"])
    assert result.exit_code == 0, result.output
    assert "services.secret: 1 rows, 1 re-encrypted" in result.output
    assert "mcp_servers.shared_headers: 1 rows, 1 re-encrypted" in result.output
    # Running again finds nothing left to do.
    again = app.test_cli_runner().invoke(args=["rotate-encryption-key"])
    assert "services.secret: 1 rows, 0 re-encrypted, 1 already current" in again.output

    swap_keys(new_key)  # the old key is gone: everything still reads
    r = admin_api.get("/services")
    assert r.status_code == 200 and r.json["services"][0]["name"] == "billing"
    with app.app_context():
        assert db.session.scalar(db.select(Service.secret)) == CANARY
    assert CANARY not in raw_dump(app)


def test_unreadable_row_gives_a_clear_error_naming_the_column(app, admin_api, swap_keys):
    r = admin_api.post("/services", json={"name": "billing", "base_url": "http://127.0.0.1:9", "secret": CANARY})
    sid = r.json["id"]
    swap_keys(Fernet.generate_key().decode())  # the key it was written with is not configured
    with app.app_context():
        with pytest.raises(DecryptionError, match="services.secret"):
            db.session.get(Service, sid)
        db.session.rollback()
    r = admin_api.get(f"/services/{sid}")
    assert r.status_code == 500
    assert r.json["error"]["code"] == "decryption_failed"
    assert "services.secret" in r.json["error"]["message"] and CANARY not in r.get_data(as_text=True)
    # Other routes keep working: no crash loop.
    assert admin_api.get("/users").status_code == 200
    # Rotation refuses to half-do the job and says why.
    result = app.test_cli_runner().invoke(args=["rotate-encryption-key"])
    assert result.exit_code == 1
    assert "services.secret: 1 rows, 0 re-encrypted, 0 already current, 1 unreadable" in result.output


def test_bad_key_configuration_is_refused_clearly():
    with pytest.raises(RuntimeError, match="Fernet keys"):
        Keyring(["not-a-key"])
    with pytest.raises(RuntimeError, match="empty"):
        Keyring([])
