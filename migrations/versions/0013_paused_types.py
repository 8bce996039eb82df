"""Pause a type: the event types whose events wait until resumed

Revision ID: 0013
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "paused_types",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("paused_by", sa.String(length=320), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("type"),
    )


def downgrade():
    op.drop_table("paused_types")
