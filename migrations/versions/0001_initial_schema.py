"""initial schema: users, sessions, tokens, keys, grants, servers, services, audit

Revision ID: 0001
Revises: 
Create Date: 2026-11-30 04:41:56.350538

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('actor_type', sa.String(length=16), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=254), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=32), nullable=True),
    sa.Column('target_id', sa.Integer(), nullable=True),
    sa.Column('target', sa.String(length=254), nullable=False),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_created_at'), ['created_at'], unique=False)

    op.create_table('mcp_servers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('auth_type', sa.String(length=32), nullable=False),
    sa.Column('shared_headers', sa.Text(), nullable=False),
    sa.Column('per_user_header_keys', sa.JSON(), nullable=False),
    sa.Column('oauth_config', sa.Text(), nullable=True),
    sa.Column('allow_on_all_virtual_keys', sa.Boolean(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('tools', sa.JSON(), nullable=False),
    sa.Column('tools_refreshed_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("auth_type IN ('none', 'headers', 'oauth', 'per_user_headers', 'per_user_oauth')", name=op.f('ck_mcp_servers_auth_type')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_servers')),
    sa.UniqueConstraint('name', name=op.f('uq_mcp_servers_name'))
    )
    op.create_table('services',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('base_url', sa.String(length=2048), nullable=False),
    sa.Column('credential_header', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_services')),
    sa.UniqueConstraint('name', name=op.f('uq_services_name'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('must_change_password', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('last_login_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("role IN ('admin', 'member')", name=op.f('ck_users_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('dashboard_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_dashboard_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_dashboard_sessions_token_hash'))
    )
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_sessions_user_id'), ['user_id'], unique=False)

    op.create_table('virtual_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('key_prefix', sa.String(length=16), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('agent_id', sa.String(length=200), nullable=True),
    sa.Column('rate_limit_per_minute', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("source IN ('dashboard', 'api', 'mcp')", name=op.f('ck_virtual_keys_source')),
    sa.CheckConstraint('rate_limit_per_minute > 0', name=op.f('ck_virtual_keys_rate_limit_positive')),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_virtual_keys_owner_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_virtual_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_virtual_keys_key_hash'))
    )
    with op.batch_alter_table('virtual_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_virtual_keys_owner_id'), ['owner_id'], unique=False)

    op.create_table('virtual_key_server_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('virtual_key_id', sa.Integer(), nullable=False),
    sa.Column('mcp_server_id', sa.Integer(), nullable=False),
    sa.Column('tools', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['mcp_server_id'], ['mcp_servers.id'], name=op.f('fk_virtual_key_server_grants_mcp_server_id_mcp_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_virtual_key_server_grants_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_virtual_key_server_grants')),
    sa.UniqueConstraint('virtual_key_id', 'mcp_server_id', name='uq_vk_server_grant')
    )
    with op.batch_alter_table('virtual_key_server_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_virtual_key_server_grants_mcp_server_id'), ['mcp_server_id'], unique=False)

    op.create_table('virtual_key_service_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('virtual_key_id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.CheckConstraint("scope IN ('read', 'write')", name=op.f('ck_virtual_key_service_grants_scope')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_virtual_key_service_grants_service_id_services'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_virtual_key_service_grants_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_virtual_key_service_grants')),
    sa.UniqueConstraint('virtual_key_id', 'service_id', name='uq_vk_service_grant')
    )
    with op.batch_alter_table('virtual_key_service_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_virtual_key_service_grants_service_id'), ['service_id'], unique=False)



def downgrade():
    with op.batch_alter_table('virtual_key_service_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_virtual_key_service_grants_service_id'))

    op.drop_table('virtual_key_service_grants')
    with op.batch_alter_table('virtual_key_server_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_virtual_key_server_grants_mcp_server_id'))

    op.drop_table('virtual_key_server_grants')
    with op.batch_alter_table('virtual_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_virtual_keys_owner_id'))

    op.drop_table('virtual_keys')
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_sessions_user_id'))

    op.drop_table('dashboard_sessions')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_id'))

    op.drop_table('api_tokens')
    op.drop_table('users')
    op.drop_table('services')
    op.drop_table('mcp_servers')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_created_at'))
        batch_op.drop_index(batch_op.f('ix_audit_events_action'))

    op.drop_table('audit_events')
