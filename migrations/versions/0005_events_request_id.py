"""events.request_id: the X-Request-ID of the request that created the event

The worker's log line for each attempt carries it, so a request's line and the lines of the
events it created can be found together. A column rather than a field of the queue message:
recovery re-sends events from the database alone. Nullable: events from before have none.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))


def downgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("request_id")
