"""credentials: per-binding credentials and pending submission flows

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('auth_mode', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('virtual_key_id', sa.Integer(), nullable=True),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('mcp_server_id', sa.Integer(), nullable=False),
    sa.Column('auth_kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('values', sa.Text(), nullable=False),
    sa.Column('header_keys', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('status_changed_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("(auth_mode = 'user' AND user_id IS NOT NULL AND virtual_key_id IS NULL AND session_id IS NULL) OR (auth_mode = 'vk' AND virtual_key_id IS NOT NULL AND user_id IS NULL AND session_id IS NULL) OR (auth_mode = 'session' AND session_id IS NOT NULL AND user_id IS NULL AND virtual_key_id IS NULL)", name=op.f('ck_credentials_binding')),
    sa.CheckConstraint("auth_kind IN ('headers')", name=op.f('ck_credentials_auth_kind')),
    sa.CheckConstraint("auth_mode IN ('user', 'vk', 'session')", name=op.f('ck_credentials_auth_mode')),
    sa.CheckConstraint("status IN ('active', 'needs_update', 'orphaned')", name=op.f('ck_credentials_status')),
    sa.ForeignKeyConstraint(['mcp_server_id'], ['mcp_servers.id'], name=op.f('fk_credentials_mcp_server_id_mcp_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['mcp_sessions.id'], name=op.f('fk_credentials_session_id_mcp_sessions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_credentials_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_credentials_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credentials'))
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index('ix_credentials_mcp_server_id', ['mcp_server_id'], unique=False)
        batch_op.create_index('uq_credentials_session_binding', ['session_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'session'"), postgresql_where=sa.text("auth_mode = 'session'"))
        batch_op.create_index('uq_credentials_user_binding', ['user_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'user'"), postgresql_where=sa.text("auth_mode = 'user'"))
        batch_op.create_index('uq_credentials_vk_binding', ['virtual_key_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'vk'"), postgresql_where=sa.text("auth_mode = 'vk'"))

    op.create_table('flows',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('auth_mode', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('virtual_key_id', sa.Integer(), nullable=True),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('mcp_server_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("(auth_mode = 'user' AND user_id IS NOT NULL AND virtual_key_id IS NULL AND session_id IS NULL) OR (auth_mode = 'vk' AND virtual_key_id IS NOT NULL AND user_id IS NULL AND session_id IS NULL) OR (auth_mode = 'session' AND session_id IS NOT NULL AND user_id IS NULL AND virtual_key_id IS NULL)", name=op.f('ck_flows_binding')),
    sa.CheckConstraint("auth_mode IN ('user', 'vk', 'session')", name=op.f('ck_flows_auth_mode')),
    sa.CheckConstraint("kind IN ('headers')", name=op.f('ck_flows_kind')),
    sa.CheckConstraint("status IN ('pending', 'used')", name=op.f('ck_flows_status')),
    sa.ForeignKeyConstraint(['mcp_server_id'], ['mcp_servers.id'], name=op.f('fk_flows_mcp_server_id_mcp_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['mcp_sessions.id'], name=op.f('fk_flows_session_id_mcp_sessions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_flows_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_flows_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flows'))
    )
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.create_index('ix_flows_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_flows_mcp_server_id', ['mcp_server_id'], unique=False)
        batch_op.create_index('uq_flows_session_binding', ['session_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'session' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'session' AND status = 'pending'"))
        batch_op.create_index('uq_flows_user_binding', ['user_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'user' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'user' AND status = 'pending'"))
        batch_op.create_index('uq_flows_vk_binding', ['virtual_key_id', 'mcp_server_id'], unique=True, sqlite_where=sa.text("auth_mode = 'vk' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'vk' AND status = 'pending'"))


def downgrade():
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.drop_index('uq_flows_vk_binding', sqlite_where=sa.text("auth_mode = 'vk' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'vk' AND status = 'pending'"))
        batch_op.drop_index('uq_flows_user_binding', sqlite_where=sa.text("auth_mode = 'user' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'user' AND status = 'pending'"))
        batch_op.drop_index('uq_flows_session_binding', sqlite_where=sa.text("auth_mode = 'session' AND status = 'pending'"), postgresql_where=sa.text("auth_mode = 'session' AND status = 'pending'"))
        batch_op.drop_index('ix_flows_mcp_server_id')
        batch_op.drop_index('ix_flows_expires_at')

    op.drop_table('flows')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index('uq_credentials_vk_binding', sqlite_where=sa.text("auth_mode = 'vk'"), postgresql_where=sa.text("auth_mode = 'vk'"))
        batch_op.drop_index('uq_credentials_user_binding', sqlite_where=sa.text("auth_mode = 'user'"), postgresql_where=sa.text("auth_mode = 'user'"))
        batch_op.drop_index('uq_credentials_session_binding', sqlite_where=sa.text("auth_mode = 'session'"), postgresql_where=sa.text("auth_mode = 'session'"))
        batch_op.drop_index('ix_credentials_mcp_server_id')

    op.drop_table('credentials')
