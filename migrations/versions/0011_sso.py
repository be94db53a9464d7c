"""single sign-on: users remember which person at the OpenID provider they are

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('sso_issuer', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('sso_subject', sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint('uq_users_sso_identity', ['sso_issuer', 'sso_subject'])


def downgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_constraint('uq_users_sso_identity', type_='unique')
        batch_op.drop_column('sso_subject')
        batch_op.drop_column('sso_issuer')
