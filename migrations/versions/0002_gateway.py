"""gateway: MCP sessions, per-server upstream timeouts

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('mcp_servers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connect_timeout', sa.Float(), server_default='5', nullable=False))
        batch_op.add_column(sa.Column('read_timeout', sa.Float(), server_default='30', nullable=False))

    op.create_table('mcp_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('virtual_key_id', sa.Integer(), nullable=True),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('protocol_version', sa.String(length=16), nullable=False),
    sa.Column('client_info', sa.JSON(), nullable=False),
    sa.Column('capabilities', sa.JSON(), nullable=False),
    sa.Column('log_level', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['server_id'], ['mcp_servers.id'], name=op.f('fk_mcp_sessions_server_id_mcp_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_mcp_sessions_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_sessions'))
    )
    with op.batch_alter_table('mcp_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mcp_sessions_virtual_key_id'), ['virtual_key_id'], unique=False)


def downgrade():
    with op.batch_alter_table('mcp_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mcp_sessions_virtual_key_id'))
    op.drop_table('mcp_sessions')
    with op.batch_alter_table('mcp_servers', schema=None) as batch_op:
        batch_op.drop_column('read_timeout')
        batch_op.drop_column('connect_timeout')
