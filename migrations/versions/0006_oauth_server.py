"""oauth server: clients, consents, codes, refresh tokens and signing keys of the authorization server

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:25:42.882316

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('oauth_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=2048), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('client_name', sa.String(length=200), nullable=False),
    sa.Column('client_uri', sa.String(length=2048), nullable=True),
    sa.Column('redirect_uris', sa.JSON(), nullable=False),
    sa.Column('grant_types', sa.JSON(), nullable=False),
    sa.Column('response_types', sa.JSON(), nullable=False),
    sa.Column('token_endpoint_auth_method', sa.String(length=32), nullable=False),
    sa.Column('client_secret_hash', sa.String(length=64), nullable=True),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('fetched_at', sa.DateTime(), nullable=True),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('registered_from', sa.String(length=64), nullable=True),
    sa.CheckConstraint("kind IN ('dcr', 'cimd')", name=op.f('ck_oauth_clients_kind')),
    sa.CheckConstraint("token_endpoint_auth_method IN ('none', 'client_secret_basic', 'client_secret_post')", name=op.f('ck_oauth_clients_auth_method')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_clients')),
    sa.UniqueConstraint('client_id', name=op.f('uq_oauth_clients_client_id'))
    )
    op.create_table('signing_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('private_pem', sa.Text(), nullable=False),
    sa.Column('public_jwk', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('retired_at', sa.DateTime(), nullable=True),
    sa.Column('remove_after', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_keys')),
    sa.UniqueConstraint('kid', name=op.f('uq_signing_keys_kid'))
    )
    op.create_table('oauth_consents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_pk', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('virtual_key_id', sa.Integer(), nullable=True),
    sa.Column('login_id', sa.Integer(), nullable=True),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('resource', sa.String(length=2048), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_reason', sa.String(length=64), nullable=True),
    sa.CheckConstraint("(mode = 'vk') = (virtual_key_id IS NOT NULL)", name=op.f('ck_oauth_consents_key_iff_vk')),
    sa.CheckConstraint("mode IN ('user', 'vk', 'session')", name=op.f('ck_oauth_consents_mode')),
    sa.ForeignKeyConstraint(['client_pk'], ['oauth_clients.id'], name=op.f('fk_oauth_consents_client_pk_oauth_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['login_id'], ['dashboard_sessions.id'], name=op.f('fk_oauth_consents_login_id_dashboard_sessions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oauth_consents_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_oauth_consents_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_consents'))
    )
    with op.batch_alter_table('oauth_consents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_consents_client_pk'), ['client_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_oauth_consents_login_id'), ['login_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oauth_consents_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oauth_consents_virtual_key_id'), ['virtual_key_id'], unique=False)

    op.create_table('oauth_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_pk', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('login_id', sa.Integer(), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('virtual_key_id', sa.Integer(), nullable=True),
    sa.Column('redirect_uri', sa.String(length=2048), nullable=False),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('resource', sa.String(length=2048), nullable=False),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('code_challenge_method', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.Column('consent_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['client_pk'], ['oauth_clients.id'], name=op.f('fk_oauth_codes_client_pk_oauth_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['consent_id'], ['oauth_consents.id'], name=op.f('fk_oauth_codes_consent_id_oauth_consents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['login_id'], ['dashboard_sessions.id'], name=op.f('fk_oauth_codes_login_id_dashboard_sessions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oauth_codes_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['virtual_key_id'], ['virtual_keys.id'], name=op.f('fk_oauth_codes_virtual_key_id_virtual_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_codes')),
    sa.UniqueConstraint('code_hash', name=op.f('uq_oauth_codes_code_hash'))
    )
    with op.batch_alter_table('oauth_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_codes_expires_at'), ['expires_at'], unique=False)

    op.create_table('oauth_refresh_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('consent_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('rotated_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['consent_id'], ['oauth_consents.id'], name=op.f('fk_oauth_refresh_tokens_consent_id_oauth_consents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_refresh_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_oauth_refresh_tokens_token_hash'))
    )
    with op.batch_alter_table('oauth_refresh_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_refresh_tokens_consent_id'), ['consent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oauth_refresh_tokens_expires_at'), ['expires_at'], unique=False)



def downgrade():
    with op.batch_alter_table('oauth_refresh_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_refresh_tokens_expires_at'))
        batch_op.drop_index(batch_op.f('ix_oauth_refresh_tokens_consent_id'))

    op.drop_table('oauth_refresh_tokens')
    with op.batch_alter_table('oauth_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_codes_expires_at'))

    op.drop_table('oauth_codes')
    with op.batch_alter_table('oauth_consents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_consents_virtual_key_id'))
        batch_op.drop_index(batch_op.f('ix_oauth_consents_user_id'))
        batch_op.drop_index(batch_op.f('ix_oauth_consents_login_id'))
        batch_op.drop_index(batch_op.f('ix_oauth_consents_client_pk'))

    op.drop_table('oauth_consents')
    op.drop_table('signing_keys')
    op.drop_table('oauth_clients')
