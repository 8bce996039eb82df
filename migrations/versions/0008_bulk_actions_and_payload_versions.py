"""bulk_actions (+ bulk_action_items) and payload_versions

A bulk action replays or discards the FAILED events its filter matched when it was created:
those events' ids are written into bulk_action_items in the creating transaction, and each
batch deletes the items it handles. payload_versions keeps every payload an edit-and-replay
replaced. DISCARDED needs no change here: events.status is a string.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade():
    op.create_table(
        "bulk_actions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("filter", JSON, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bulk_actions_status", "bulk_actions", ["status"])
    op.create_index("ix_bulk_actions_created_at", "bulk_actions", ["created_at"])
    op.create_table(
        "bulk_action_items",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["bulk_actions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id", "event_id"),
    )
    op.create_table(
        "payload_versions",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("replaced_by", sa.Uuid(), nullable=True),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["replaced_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("event_id", "version"),
    )


def downgrade():
    op.drop_table("payload_versions")
    op.drop_table("bulk_action_items")
    op.drop_index("ix_bulk_actions_created_at", table_name="bulk_actions")
    op.drop_index("ix_bulk_actions_status", table_name="bulk_actions")
    op.drop_table("bulk_actions")
