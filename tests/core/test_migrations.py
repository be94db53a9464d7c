"""`flask db upgrade` on an empty database (conftest builds the test schema that way) equals the models."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.extensions import db


def test_migrations_match_models(app):
    with app.app_context():
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, db.metadata)
    assert diff == []


def test_migration_head_is_applied(app):
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parents[2] / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with app.app_context():
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_upgrading_a_database_with_data_loses_nothing(tmp_path):
    """A SQLite database at 0004 (before the migrations that rebuild mcp_sessions and
    virtual_keys) with rows in every table that hangs off them, upgraded to the head by
    `flask db upgrade`: every row is still there (a rebuild with foreign keys enforced would have
    cascaded into the child tables), and sessions got their principal."""
    import os
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    env = {**os.environ, "PORTCULLIS_INSTANCE_PATH": str(tmp_path / "instance")}
    env.pop("DATABASE_URL", None)
    flask = [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "db", "upgrade"]
    subprocess.run([*flask, "0004"], cwd=root, env=env, check=True, capture_output=True, timeout=120)
    path = tmp_path / "instance" / "portcullis.db"
    rows = {
        "users": "(email,password_hash,role,active,must_change_password,created_at,updated_at) VALUES "
                 "('a@example.com','x','member',1,0,'2026-01-01','2026-01-01')",
        "mcp_servers": "(name,url,auth_type,shared_headers,per_user_header_keys,allow_on_all_virtual_keys,enabled,"
                       "tools,connect_timeout,read_timeout,created_at,updated_at) VALUES ('s','http://x/mcp','none',"
                       "'x','[]',0,1,'[]',5,30,'2026-01-01','2026-01-01')",
        "services": "(name,description,base_url,credential_header,secret,created_at,updated_at) VALUES "
                    "('svc','','http://x','X-API-Key','x','2026-01-01','2026-01-01')",
        "virtual_keys": "(name,key_hash,key_prefix,owner_id,source,rate_limit_per_minute,active,created_at,"
                        "updated_at) VALUES ('k','h','vk_x',1,'api',60,1,'2026-01-01','2026-01-01')",
        "virtual_key_server_grants": "(virtual_key_id,mcp_server_id) VALUES (1,1)",
        "virtual_key_service_grants": "(virtual_key_id,service_id,scope) VALUES (1,1,'read')",
        "mcp_sessions": "(id,virtual_key_id,protocol_version,client_info,capabilities,created_at) VALUES "
                        "('sess',1,'2025-11-25','{}','{}','2026-01-01')",
        "credentials": "(auth_mode,virtual_key_id,mcp_server_id,auth_kind,status,\"values\",header_keys,created_at,"
                       "updated_at,status_changed_at) VALUES ('vk',1,1,'headers','active','x','[]','2026-01-01',"
                       "'2026-01-01','2026-01-01')",
        "flows": "(id,kind,auth_mode,session_id,mcp_server_id,status,expires_at,created_at,updated_at) VALUES "
                 "('f1','headers','session','sess',1,'pending','2030-01-01','2026-01-01','2026-01-01')",
    }
    with sqlite3.connect(path) as conn:
        for table, values in rows.items():
            conn.execute(f"INSERT INTO {table} {values}")
    subprocess.run(flask, cwd=root, env=env, check=True, capture_output=True, timeout=120)
    with sqlite3.connect(path) as conn:
        counts = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in rows}
        principal = conn.execute("SELECT principal FROM mcp_sessions").fetchone()[0]
        schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'virtual_keys'").fetchone()[0]
    assert counts == {table: 1 for table in rows}
    assert principal == "key:1" and "AUTOINCREMENT" in schema
