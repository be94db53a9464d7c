"""virtual keys: ids are never reused on SQLite either (AUTOINCREMENT)

An issued key names its issuer by id (agent_id vk:<id>), and caches and rate-limit budgets are
keyed by id: a deleted key's id must not come back as another key's. PostgreSQL sequences never
reuse ids; SQLite reuses the highest rowid after a delete unless the table is AUTOINCREMENT.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('virtual_keys', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': True}) as batch_op:
            pass


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('virtual_keys', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': False}) as batch_op:
            pass
