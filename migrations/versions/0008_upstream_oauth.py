"""upstream OAuth: OAuth credentials (expiry, scopes, refresh lease, status needs_reauth), oauth
flows (PKCE verifier and state, encrypted), and per server what was discovered and registered at
the upstream's authorization server plus the shared token of oauth servers (upstream_oauth)

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('upstream_oauth',
    sa.Column('mcp_server_id', sa.Integer(), nullable=False),
    sa.Column('registration', sa.Text(), nullable=True),
    sa.Column('token', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('scopes', sa.JSON(), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('connected_by_id', sa.Integer(), nullable=True),
    sa.Column('connected_at', sa.DateTime(), nullable=True),
    sa.Column('refresh_lease_until', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("status IS NULL OR status IN ('active', 'needs_reauth')", name=op.f('ck_upstream_oauth_status')),
    sa.ForeignKeyConstraint(['connected_by_id'], ['users.id'], name=op.f('fk_upstream_oauth_connected_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['mcp_server_id'], ['mcp_servers.id'], name=op.f('fk_upstream_oauth_mcp_server_id_mcp_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('mcp_server_id', name=op.f('pk_upstream_oauth'))
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('scopes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('refresh_lease_until', sa.DateTime(), nullable=True))
        batch_op.drop_constraint(op.f('ck_credentials_auth_kind'), type_='check')
        batch_op.drop_constraint(op.f('ck_credentials_status'), type_='check')
        batch_op.create_check_constraint(op.f('ck_credentials_auth_kind'), "auth_kind IN ('headers', 'oauth')")
        batch_op.create_check_constraint(
            op.f('ck_credentials_status'), "status IN ('active', 'needs_update', 'orphaned', 'needs_reauth')")
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('oauth', sa.Text(), nullable=True))
        batch_op.drop_constraint(op.f('ck_flows_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_flows_kind'), "kind IN ('headers', 'oauth')")


def downgrade():
    op.execute("DELETE FROM flows WHERE kind = 'oauth'")
    op.execute("DELETE FROM credentials WHERE auth_kind = 'oauth' OR status = 'needs_reauth'")
    with op.batch_alter_table('flows', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_flows_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_flows_kind'), "kind IN ('headers')")
        batch_op.drop_column('oauth')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_credentials_status'), type_='check')
        batch_op.drop_constraint(op.f('ck_credentials_auth_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_credentials_auth_kind'), "auth_kind IN ('headers')")
        batch_op.create_check_constraint(op.f('ck_credentials_status'), "status IN ('active', 'needs_update', 'orphaned')")
        batch_op.drop_column('refresh_lease_until')
        batch_op.drop_column('scopes')
        batch_op.drop_column('expires_at')
    op.drop_table('upstream_oauth')
