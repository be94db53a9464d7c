"""sessions: indexes for the sessions list (newest first, paginated in the database)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index('ix_credentials_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_credentials_active_user_binding', ['user_id', 'mcp_server_id'], unique=False, sqlite_where=sa.text("auth_mode = 'user' AND status = 'active'"), postgresql_where=sa.text("auth_mode = 'user' AND status = 'active'"))
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.create_index('ix_flows_created_at_id', ['created_at', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.drop_index('ix_flows_created_at_id')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index('ix_credentials_active_user_binding', sqlite_where=sa.text("auth_mode = 'user' AND status = 'active'"), postgresql_where=sa.text("auth_mode = 'user' AND status = 'active'"))
        batch_op.drop_index('ix_credentials_created_at_id')
