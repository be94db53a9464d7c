"""mcp streams: each agent session's event log (the GET /mcp stream, resumable) and the
upstream sessions an agent session holds of its own (shared by every worker and instance)

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'mcp_session_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['mcp_sessions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_mcp_session_events_session_id_id', 'mcp_session_events', ['session_id', 'id'])
    op.create_index(op.f('ix_mcp_session_events_created_at'), 'mcp_session_events', ['created_at'])
    op.create_table(
        'mcp_upstream_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('agent_session_id', sa.String(length=64), nullable=False),
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('upstream_session_id', sa.Text(), nullable=True),
        sa.Column('protocol_version', sa.String(length=16), nullable=True),
        sa.Column('last_event_id', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['agent_session_id'], ['mcp_sessions.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['server_id'], ['mcp_servers.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('agent_session_id', 'server_id', name='uq_mcp_upstream_sessions_agent_server'),
    )


def downgrade():
    op.drop_table('mcp_upstream_sessions')
    op.drop_index(op.f('ix_mcp_session_events_created_at'), table_name='mcp_session_events')
    op.drop_index('ix_mcp_session_events_session_id_id', table_name='mcp_session_events')
    op.drop_table('mcp_session_events')
