"""mcp servers: the capabilities the upstream announced at discovery

The gateway advertises to agents what the upstreams offer (resources, prompts, completions,
logging), and fans out only to upstreams that offer a feature: both read this column instead of
asking the upstream on the hot path. NULL: not discovered yet (nothing beyond tools advertised).

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('mcp_servers') as batch_op:
        batch_op.add_column(sa.Column('capabilities', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('mcp_servers') as batch_op:
        batch_op.drop_column('capabilities')
