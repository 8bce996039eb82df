"""error groups: every failed attempt belongs to one, by fingerprint; the history is grouped

Adds `error_groups` with their per-type and per-hour counts, `event_attempts.error_group_id`,
and an index of the FAILED events by group. (`events.error_group_id` and its filter index are
0006's. It gets no foreign key: adding one rebuilds `events` on SQLite, and dropping the old
table there cascades to every attempt.) Then groups the failed attempts already recorded, a
batch at a time, with the rule the workers use (eventflow/tasks/fingerprints.py, reading the
stored error and traceback), and gives each event the group of its latest failure.

Revision ID: 0007
Revises: 0006
"""

from collections import Counter
from datetime import UTC

import sqlalchemy as sa
from alembic import op

from eventflow.tasks import fingerprints

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH = 5000
FAILED = "status = 'FAILED'"


def upgrade():
    op.create_table(
        "error_groups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("exception", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("frame", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sample_error", sa.Text(), nullable=True),
        sa.Column("sample_traceback", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("error_groups", schema=None) as batch_op:
        batch_op.create_index("ix_error_groups_first_seen", ["first_seen"], unique=False)
    op.create_table(
        "error_group_types",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["error_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "type"),
    )
    op.create_table(
        "error_group_hours",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["error_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "hour"),
    )
    with op.batch_alter_table("error_group_hours", schema=None) as batch_op:
        batch_op.create_index("ix_error_group_hours_hour", ["hour"], unique=False)
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_group_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "event_attempts_error_group_id_fkey",
            "error_groups",
            ["error_group_id"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_failed_error_group_id",
            ["error_group_id"],
            unique=False,
            postgresql_where=sa.text(FAILED),
            sqlite_where=sa.text(FAILED),
        )
    group_history(op.get_bind())


def downgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_failed_error_group_id")
    op.execute("UPDATE events SET error_group_id = NULL")
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.drop_constraint("event_attempts_error_group_id_fkey", type_="foreignkey")
        batch_op.drop_column("error_group_id")
    op.drop_table("error_group_hours")
    op.drop_table("error_group_types")
    with op.batch_alter_table("error_groups", schema=None) as batch_op:
        batch_op.drop_index("ix_error_groups_first_seen")
    op.drop_table("error_groups")


# --- grouping the history ---------------------------------------------------------------------

groups_t = sa.table(
    "error_groups",
    sa.column("id", sa.Integer),
    sa.column("fingerprint", sa.String),
    sa.column("exception", sa.String),
    sa.column("message", sa.Text),
    sa.column("frame", sa.String),
    sa.column("status", sa.String),
    sa.column("count", sa.BigInteger),
    sa.column("first_seen", sa.DateTime(timezone=True)),
    sa.column("last_seen", sa.DateTime(timezone=True)),
    sa.column("sample_error", sa.Text),
    sa.column("sample_traceback", sa.Text),
)
types_t = sa.table(
    "error_group_types",
    sa.column("group_id", sa.Integer),
    sa.column("type", sa.String),
    sa.column("count", sa.BigInteger),
)
hours_t = sa.table(
    "error_group_hours",
    sa.column("group_id", sa.Integer),
    sa.column("hour", sa.DateTime(timezone=True)),
    sa.column("count", sa.BigInteger),
)
attempts_t = sa.table(
    "event_attempts",
    sa.column("id", sa.Integer),
    sa.column("event_id"),
    sa.column("number", sa.Integer),
    sa.column("outcome", sa.String),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("error", sa.Text),
    sa.column("traceback", sa.Text),
    sa.column("error_group_id", sa.Integer),
)
events_t = sa.table(
    "events",
    sa.column("id"),
    sa.column("type", sa.String),
    sa.column("error_group_id", sa.Integer),
)
FAILED_OUTCOMES = ("retry", "failed", "lost")


def _utc(moment):
    """SQLite hands back naive times (stored as UTC); PostgreSQL aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def group_history(bind):
    """Fingerprint every failed attempt already recorded and count it into its group."""
    groups = {}  # fingerprint digest -> [id, count, first_seen, last_seen]
    per_type = Counter()  # (group id, type) -> failures
    per_hour = Counter()  # (group id, hour) -> failures
    last_id = 0
    while True:
        rows = bind.execute(
            sa.select(
                attempts_t.c.id,
                attempts_t.c.outcome,
                attempts_t.c.error,
                attempts_t.c.traceback,
                sa.func.coalesce(attempts_t.c.finished_at, attempts_t.c.started_at),
                events_t.c.type,
            )
            .select_from(attempts_t.join(events_t, events_t.c.id == attempts_t.c.event_id))
            .where(attempts_t.c.outcome.in_(FAILED_OUTCOMES), attempts_t.c.id > last_id)
            .order_by(attempts_t.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        by_group = {}  # group id -> attempt ids of this batch
        for attempt_id, outcome, error, traceback, moment, event_type in rows:
            if outcome == "lost":
                fingerprint = fingerprints.LOST
            else:
                fingerprint = fingerprints.fingerprint_text(error, traceback)
            moment = _utc(moment)
            group = groups.get(fingerprint.digest)
            if group is None:
                group_id = bind.execute(
                    groups_t.insert()
                    .values(
                        fingerprint=fingerprint.digest,
                        exception=fingerprint.exception[:255],
                        message=fingerprint.message,
                        frame=fingerprint.frame[:255],
                        status="open",
                        count=0,
                        first_seen=moment,
                        last_seen=moment,
                        sample_error=error,
                        sample_traceback=traceback,
                    )
                    .returning(groups_t.c.id)
                ).scalar_one()
                group = groups[fingerprint.digest] = [group_id, 0, moment, moment]
            group[1] += 1
            group[2], group[3] = min(group[2], moment), max(group[3], moment)
            per_type[group[0], event_type] += 1
            per_hour[group[0], moment.replace(minute=0, second=0, microsecond=0)] += 1
            by_group.setdefault(group[0], []).append(attempt_id)
        for group_id, attempt_ids in by_group.items():
            bind.execute(
                attempts_t.update()
                .where(attempts_t.c.id.in_(attempt_ids))
                .values(error_group_id=group_id)
            )
        last_id = rows[-1][0]
    for group_id, count, first_seen, last_seen in groups.values():
        bind.execute(
            groups_t.update()
            .where(groups_t.c.id == group_id)
            .values(count=count, first_seen=first_seen, last_seen=last_seen)
        )
    if per_type:
        bind.execute(
            types_t.insert(),
            [{"group_id": g, "type": t, "count": n} for (g, t), n in per_type.items()],
        )
    if per_hour:
        bind.execute(
            hours_t.insert(),
            [{"group_id": g, "hour": h, "count": n} for (g, h), n in per_hour.items()],
        )
    # Each event: the group of its latest failed attempt.
    latest = (
        sa.select(attempts_t.c.error_group_id)
        .where(attempts_t.c.event_id == events_t.c.id, attempts_t.c.error_group_id.is_not(None))
        .order_by(attempts_t.c.number.desc())
        .limit(1)
        .scalar_subquery()
    )
    failed_events = sa.select(attempts_t.c.event_id).where(attempts_t.c.error_group_id.is_not(None))
    bind.execute(
        events_t.update().where(events_t.c.id.in_(failed_events)).values(error_group_id=latest)
    )
