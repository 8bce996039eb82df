"""event_counts: events per (type, status), kept by triggers as events move

The dashboard's snapshot (every second), /metrics, the DLQ and listing totals counted `events`
with COUNT(*), which at millions of rows costs a backend's CPU for as long as a dashboard is
open. Triggers on `events` now keep the counts in the transaction of each change, whatever
path makes it (ingest, claims, completions, retries, replay, discard, deletes, purges):

* PostgreSQL: statement-level AFTER triggers with transition tables, so a group commit of 500
  events or a batch completion is one upsert per (type, status) it touched, not one per row.
  Each key has up to SHARDS rows, picked by the writing backend's pid, so concurrent ingests
  and completions rarely wait on the same row lock; an upsert locks its rows in key order, so
  two transactions that do share a shard cannot deadlock on them. UPDATE has no column list
  (PostgreSQL refuses one with transition tables): an UPDATE that moves no status adds up to
  nothing and writes nothing. TRUNCATE of events empties the counts.
* SQLite (the embedded default): row-level triggers, one shard.

The triggers are made before the counts are filled, in the same transaction: on PostgreSQL
CREATE TRIGGER locks out writers until the commit, so no change falls between the two.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SHARDS = 16

PG_FUNCTIONS = f"""
CREATE FUNCTION event_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO event_counts AS c (type, status, shard, count)
        SELECT type, status, pg_backend_pid() % {SHARDS}, count(*)
        FROM new_rows GROUP BY type, status ORDER BY type, status
        ON CONFLICT (type, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO event_counts AS c (type, status, shard, count)
        SELECT type, status, pg_backend_pid() % {SHARDS}, -count(*)
        FROM old_rows GROUP BY type, status ORDER BY type, status
        ON CONFLICT (type, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    ELSE
        INSERT INTO event_counts AS c (type, status, shard, count)
        SELECT type, status, pg_backend_pid() % {SHARDS}, sum(n)
        FROM (
            SELECT type, status, count(*) AS n FROM new_rows GROUP BY type, status
            UNION ALL
            SELECT type, status, -count(*) FROM old_rows GROUP BY type, status
        ) AS moved
        GROUP BY type, status HAVING sum(n) <> 0 ORDER BY type, status
        ON CONFLICT (type, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION event_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_counts;
    RETURN NULL;
END $$;
"""

PG_TRIGGERS = """
CREATE TRIGGER event_counts_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION event_counts_add();
CREATE TRIGGER event_counts_update AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_add();
CREATE TRIGGER event_counts_delete AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION event_counts_add();
CREATE TRIGGER event_counts_truncate AFTER TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_clear();
"""


def _sqlite_add(row: str, sign: str) -> str:
    return (
        "INSERT INTO event_counts (type, status, shard, count) "
        f"VALUES ({row}.type, {row}.status, 0, {sign}1) "
        f"ON CONFLICT (type, status, shard) DO UPDATE SET count = count {sign} 1;"
    )


SQLITE_TRIGGERS = [
    f"CREATE TRIGGER event_counts_insert AFTER INSERT ON events BEGIN {_sqlite_add('NEW', '+')} END",
    "CREATE TRIGGER event_counts_update AFTER UPDATE OF type, status ON events "
    "WHEN OLD.type IS NOT NEW.type OR OLD.status IS NOT NEW.status "
    f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '+')} END",
    f"CREATE TRIGGER event_counts_delete AFTER DELETE ON events BEGIN {_sqlite_add('OLD', '-')} END",
]
TRIGGER_NAMES = ["event_counts_insert", "event_counts_update", "event_counts_delete"]


def upgrade():
    op.create_table(
        "event_counts",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("type", "status", "shard"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTIONS)
        op.execute(PG_TRIGGERS)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
    op.execute(
        "INSERT INTO event_counts (type, status, shard, count) "
        "SELECT type, status, 0, count(*) FROM events GROUP BY type, status"
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in [*TRIGGER_NAMES, "event_counts_truncate"]:
            op.execute(f"DROP TRIGGER {name} ON events")
        op.execute("DROP FUNCTION event_counts_add(), event_counts_clear()")
    else:
        for name in TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("event_counts")
