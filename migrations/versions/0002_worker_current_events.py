"""workers.current_events: what each worker is running now

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("current_events", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("current_events")
