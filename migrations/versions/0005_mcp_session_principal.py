"""mcp sessions: who opened them (principal), so that no other caller may use them

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('mcp_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('principal', sa.String(length=80), nullable=True))
    op.execute("UPDATE mcp_sessions SET principal = CASE WHEN virtual_key_id IS NULL THEN 'anonymous' "
               "ELSE 'key:' || CAST(virtual_key_id AS VARCHAR(20)) END")
    with op.batch_alter_table('mcp_sessions', schema=None) as batch_op:
        batch_op.alter_column('principal', existing_type=sa.String(length=80), nullable=False)


def downgrade():
    with op.batch_alter_table('mcp_sessions', schema=None) as batch_op:
        batch_op.drop_column('principal')
