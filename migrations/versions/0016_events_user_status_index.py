"""events: an index of each user's unprocessed events by status; the type in the group index

`GET /events?user=…&status=…` (and the Events page) had no index with both columns: the page and
its capped count walked the user's `(user_id, created_at)` entries and read each row to check
its status, so they grew with the user's events (883 ms p95 at 3M events, BENCHMARKS.md). This
index makes both an index range. It leaves out PROCESSED events, most of all events: a user's
processed ones are found at once through `(user_id, created_at)`, and completions, the
commonest move, write no entry here (claims and completions change `status`, so they are never
HOT updates and write an entry into every index whose predicate the new row matches).

And `ix_events_error_group_id_created_at` gets `INCLUDE (type)` on PostgreSQL: a capped count
of a group's events of one type then reads only the index (it ANDed the group's bitmap with the
type's, 1.6 s p95 at 10M events). It stays partial to failing events, so no extra entries.

Built CONCURRENTLY on PostgreSQL, as 0009 is, so ingest goes on while they build on a large
table (an interrupted build leaves an invalid index behind, which is dropped first); the group
index is built under a new name, then swapped in, so the filter never goes without one.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

INDEX = "ix_events_user_id_status_created_at"
COLUMNS = ["user_id", "status", "created_at"]
UNPROCESSED = "status <> 'PROCESSED'"
GROUP_INDEX = "ix_events_error_group_id_created_at"
HAS_GROUP = "error_group_id IS NOT NULL"


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
        _swap_group_index(include=["type"])


def downgrade():
    if op.get_context().dialect.name != "postgresql":
        op.drop_index(INDEX, table_name="events")
        return
    with op.get_context().autocommit_block():
        _swap_group_index(include=[])
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True, if_exists=True)


def _swap_group_index(include: list[str]) -> None:
    """Build the group index anew (with `include`), then put it in place of the old one."""
    building = f"{GROUP_INDEX}_new"
    op.drop_index(building, table_name="events", postgresql_concurrently=True, if_exists=True)
    op.create_index(
        building,
        "events",
        ["error_group_id", "created_at"],
        postgresql_include=include,
        postgresql_where=sa.text(HAS_GROUP),
        postgresql_concurrently=True,
    )
    op.drop_index(GROUP_INDEX, table_name="events", postgresql_concurrently=True)
    op.execute(f"ALTER INDEX {building} RENAME TO {GROUP_INDEX}")
