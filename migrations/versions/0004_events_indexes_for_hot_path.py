"""events: fewer indexes for claims and completions to write

Every claim and completion changes `status`, so neither is a HOT update and each writes an
entry into every index of `events`. Drop the two single-column indexes that a composite index
with the same leading column already serves (user_id, status), and make the pipeline's own
indexes partial so that claims and completions skip them: recovery's due-time index covers
only waiting events, the latency index only processed ones.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WAITING = "status IN ('PENDING', 'RETRYING')"
PROCESSED = "processed_at IS NOT NULL"


def upgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_user_id")
        batch_op.drop_index("ix_events_status")
        batch_op.drop_index("ix_events_status_next_attempt_at")
        batch_op.drop_index("ix_events_processed_at")
        batch_op.create_index(
            "ix_events_waiting_next_attempt_at",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text(WAITING),
            sqlite_where=sa.text(WAITING),
        )
        batch_op.create_index(
            "ix_events_processed_at",
            ["processed_at"],
            unique=False,
            postgresql_where=sa.text(PROCESSED),
            sqlite_where=sa.text(PROCESSED),
        )


def downgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_processed_at")
        batch_op.drop_index("ix_events_waiting_next_attempt_at")
        batch_op.create_index("ix_events_processed_at", ["processed_at"], unique=False)
        batch_op.create_index(
            "ix_events_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index("ix_events_status", ["status"], unique=False)
        batch_op.create_index("ix_events_user_id", ["user_id"], unique=False)
