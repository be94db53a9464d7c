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
