"""events: an index of each user's unprocessed events by status, for the user + status filter

`GET /events?user=…&status=…` (and the Events page) had no index with both columns: the page and
its capped count walked the user's `(user_id, created_at)` entries and read each row to check
its status, so they grew with the user's events (883 ms p95 at 3M events, BENCHMARKS.md). This
index makes both an index range. It leaves out PROCESSED events, most of all events: a user's
processed ones are found at once through `(user_id, created_at)`, and completions, the
commonest move, write no entry here (claims and completions change `status`, so they are never
HOT updates and write an entry into every index whose predicate the new row matches).

Built CONCURRENTLY on PostgreSQL, as 0009 is, so ingest goes on while it builds on a large
table (an interrupted build leaves an invalid index behind, which is dropped first).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEX = "ix_events_user_id_status_created_at"
COLUMNS = ["user_id", "status", "created_at"]
UNPROCESSED = "status <> 'PROCESSED'"


def upgrade():
    if op.get_context().dialect.name != "postgresql":
        op.create_index(INDEX, "events", COLUMNS, sqlite_where=sa.text(UNPROCESSED))
        return
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            INDEX,
            "events",
            COLUMNS,
            postgresql_where=sa.text(UNPROCESSED),
            postgresql_concurrently=True,
        )


def downgrade():
    if op.get_context().dialect.name != "postgresql":
        op.drop_index(INDEX, table_name="events")
        return
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True, if_exists=True)
