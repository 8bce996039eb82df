"""Metrics history: per-minute counts and a latency histogram per event type

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# As in eventflow/models.py at this revision (a migration must not change when the models do).
LATENCY_BOUNDS_MS = tuple(m * 10**e for e in range(7) for m in (1, 2, 5))
COUNTS = ("ingested", "processed", "failed", "retried")
LATENCY_COLUMNS = tuple(f"latency_le_{b}" for b in LATENCY_BOUNDS_MS) + ("latency_over",)


def upgrade():
    op.create_table(
        "metric_minutes",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        *(
            sa.Column(name, sa.Integer(), server_default="0", nullable=False)
            for name in COUNTS + LATENCY_COLUMNS
        ),
        sa.PrimaryKeyConstraint("minute", "type"),
    )


def downgrade():
    op.drop_table("metric_minutes")
