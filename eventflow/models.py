"""The tables: users, events and one row per processing attempt."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

if TYPE_CHECKING:
    # Flask-SQLAlchemy's db.Model is the declarative Base plus its metadata and query helpers;
    # the type checker sees Base, whose Mapped columns it understands.
    from .extensions import Base as Model
else:
    Model = db.Model

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; on SQLite (which keeps no zone) values come back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    # A column type, not a mode switch: it adapts values to what each dialect stores.
    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"
    VIEWER = "viewer"  # sees everything an admin sees, changes nothing


# Who sees every event and every admin page; only admins act.
STAFF_ROLES = frozenset({Role.ADMIN.value, Role.VIEWER.value})


class Status(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    RETRYING = "RETRYING"
    FAILED = "FAILED"
    DISCARDED = "DISCARDED"  # taken out of the DLQ by an admin; kept, never processed again


# Events that should have a message in the queue: the predicate of recovery's partial index,
# spelled as transitions.WAITING lists them (the planner matches it against those queries).
WAITING_PREDICATE = "status IN ('PENDING', 'RETRYING')"
FAILED_PREDICATE = "status = 'FAILED'"
# Every event but the processed ones, most of them (the user + status filter's index).
UNPROCESSED_PREDICATE = "status <> 'PROCESSED'"


class Outcome(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed, another attempt is scheduled
    FAILED = "failed"  # failed, the event went to the DLQ
    LOST = "lost"  # the worker died; recovery closed the attempt


class GroupStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"  # reopens when the error recurs
    IGNORED = "ignored"  # stays ignored


class User(Model):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER.value, server_default="user")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Every token carries the generation it was issued in; bumping it (a password change)
    # revokes all of the user's tokens and dashboard sessions at once.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value

    @property
    def is_staff(self) -> bool:
        """Admins and viewers: they see every event and the dashboard."""
        return self.role in STAFF_ROLES


class RevokedToken(Model):
    """A logged-out session: its refresh token's id, which every access token of it carries."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Kept until the session could no longer be used anyway, then pruned.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Event(Model):
    __tablename__ = "events"
    # Claims and completions change `status`, which the list indexes need, so they are never
    # HOT updates: each writes an entry into every index below. So no index repeats another's
    # leading column, and the pipeline's own indexes are partial, left alone by those moves.
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_events_user_id_idempotency_key"),
        # Also the index on user_id (its leading column), for the foreign key and the filter.
        Index("ix_events_user_id_created_at", "user_id", "created_at"),
        # Also the index on status: the status filter, the DLQ, counts by status, orphans.
        Index("ix_events_status_created_at", "status", "created_at"),
        Index("ix_events_type_created_at", "type", "created_at"),
        # Recovery looks for waiting events by their due time.
        Index(
            "ix_events_waiting_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text(WAITING_PREDICATE),
            sqlite_where=text(WAITING_PREDICATE),
        ),
        # The Events page and bulk actions filtered by error group (only failed events have one).
        # With the type in it, a group + type count is an index-only scan (PostgreSQL).
        Index(
            "ix_events_error_group_id_created_at",
            "error_group_id",
            "created_at",
            postgresql_include=["type"],
            postgresql_where=text("error_group_id IS NOT NULL"),
            sqlite_where=text("error_group_id IS NOT NULL"),
        ),
        # Payload search (payload.<path>=<value>) is JSONB containment, which this serves; on
        # PostgreSQL only (the embedded SQLite reads the JSON with json_extract instead).
        Index(
            "ix_events_payload",
            "payload",
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
        ).ddl_if(dialect="postgresql"),
        # Recent latencies (the embedded mode's dashboard) read the newest processed events.
        Index(
            "ix_events_processed_at",
            "processed_at",
            postgresql_where=text("processed_at IS NOT NULL"),
            sqlite_where=text("processed_at IS NOT NULL"),
        ),
        # A group's DLQ events (its "failed now" and its replay): FAILED events only.
        Index(
            "ix_events_failed_error_group_id",
            "error_group_id",
            postgresql_where=text(FAILED_PREDICATE),
            sqlite_where=text(FAILED_PREDICATE),
        ),
        # A user's events of one status, newest first, and their capped count: an index range
        # however many events the user has. Processed ones are left out: they are most of a
        # user's events, so ix_events_user_id_created_at finds them at once, and a completion
        # (the commonest move) then writes no entry here.
        Index(
            "ix_events_user_id_status_created_at",
            "user_id",
            "status",
            "created_at",
            postgresql_where=text(UNPROCESSED_PREDICATE),
            sqlite_where=text(UNPROCESSED_PREDICATE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Attempts made before the latest replay: a replay gives a fresh retry budget.
    replayed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the event is due: its enqueue time, or the end of its retry backoff.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When a worker claimed it (refreshed by the worker's heartbeat while it runs).
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The X-Request-ID of the request that created the event, for the worker's log lines.
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The error group of the event's latest failed attempt (None until it fails). No foreign
    # key: groups are never deleted, and adding one would rebuild `events` on SQLite, whose
    # DROP TABLE cascades to every attempt.
    error_group_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class EventAttempt(Model):
    __tablename__ = "event_attempts"
    __table_args__ = (
        UniqueConstraint("event_id", "number", name="uq_event_attempts_event_id_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default=Outcome.RUNNING.value)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The error group of a failed attempt (None for a success or a running attempt).
    error_group_id: Mapped[int | None] = mapped_column(
        ForeignKey("error_groups.id", ondelete="SET NULL"), nullable=True
    )


class ErrorGroup(Model):
    """Failed attempts with the same fingerprint (eventflow/tasks/fingerprints.py).

    Written in the statement that records each failed attempt, so reading a group, its
    types and its last day costs no scan of the attempts.
    """

    __tablename__ = "error_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    exception: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)  # normalised
    frame: Mapped[str] = mapped_column(String(255))  # "module:function", or ""
    status: Mapped[str] = mapped_column(
        String(16), default=GroupStatus.OPEN.value, server_default="open"
    )
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the group was created: a new kind of failure (what an alert on new groups reads).
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sample_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # as first seen
    sample_traceback: Mapped[str | None] = mapped_column(Text, nullable=True)


class ErrorGroupType(Model):
    """A group's failures per event type."""

    __tablename__ = "error_group_types"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("error_groups.id", ondelete="CASCADE"), primary_key=True
    )
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class ErrorGroupHour(Model):
    """A group's failures per hour: the page's sparkline and its recent-count order."""

    __tablename__ = "error_group_hours"
    __table_args__ = (Index("ix_error_group_hours_hour", "hour"),)

    group_id: Mapped[int] = mapped_column(
        ForeignKey("error_groups.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # its start
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class Worker(Model):
    """A running worker process's heartbeat: who is alive, since when, doing what."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    # What it is doing: the ids of the events it is running now (space-separated, capped).
    current_events: Mapped[str | None] = mapped_column(Text, nullable=True)
    processed: Mapped[int] = mapped_column(Integer, default=0)


class StatBucket(Model):
    """Per-second counters in the embedded mode (with Redis they live in Redis)."""

    __tablename__ = "stat_buckets"

    second: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    metric: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class AuditEntry(Model):
    """One action of an admin (or the CLI): append-only, nothing updates or deletes it."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_action_at", "action", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Who: the user (None once deleted, or for the command line) and their e-mail as it was.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class BulkActionStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class BulkAction(Model):
    """A replay or discard of the FAILED events a filter matched when the action was created."""

    __tablename__ = "bulk_actions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    action: Mapped[str] = mapped_column(String(16))  # "replay" | "discard"
    filter: Mapped[dict[str, Any]] = mapped_column(JSONType)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    matched: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(
        String(16), default=BulkActionStatus.RUNNING.value, index=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The worker running it renews this lease every batch; recovery re-sends an action whose
    # lease lapsed (its worker died, or its queue message was lost).
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BulkActionItem(Model):
    """An event a bulk action has still to touch: deleted by the batch that touches it."""

    __tablename__ = "bulk_action_items"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bulk_actions.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )


class PayloadVersion(Model):
    """An event's payload as it was before an edit-and-replay replaced it (1 = as ingested)."""

    __tablename__ = "payload_versions"

    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    replaced_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventCount(Model):
    """How many events have each (type, status): kept by triggers on `events` (migration 0010).

    Every INSERT, status change and DELETE of events adjusts these rows in its own transaction,
    whatever code path runs it, so the dashboard, /metrics and listing totals read a few rows
    instead of counting millions. On PostgreSQL each key is split over 16 rows (chosen by
    the writing backend) so concurrent ingests and completions do not queue on one row lock;
    readers sum them.
    """

    __tablename__ = "event_counts"

    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class PeriodicRun(Model):
    """When a job that runs once per interval across all workers (retention) last started."""

    __tablename__ = "periodic_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PausedType(Model):
    """An event type whose events wait: accepted, never claimed, until it is resumed.

    Small (a row per paused type), so the claim checks it in the same statement for every batch.
    """

    __tablename__ = "paused_types"

    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Who paused it, as the audit log names them (an e-mail, or the command line).
    paused_by: Mapped[str] = mapped_column(String(320))
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertState(Model):
    """One alert rule's state (eventflow/alerts.py): kept here so restarts neither repeat a
    notice nor forget one."""

    __tablename__ = "alert_states"

    rule: Mapped[str] = mapped_column(String(32), primary_key=True)
    firing: Mapped[bool] = mapped_column(Boolean, default=False)
    value: Mapped[Any | None] = mapped_column(JSON, nullable=True)  # what was measured last
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # firing since
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AlertNotice(Model):
    """A notice waiting for the webhook: the outbox, so a dead worker or receiver loses none."""

    __tablename__ = "alert_notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # {alert, state, value, ...}
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# Metrics history (eventflow/tasks/history.py writes it, eventflow/metrics_history.py reads it).
# Latencies are a histogram, not samples, so that the counts of every process add up: the upper
# bounds (ms) of its buckets, a 1-2-5 series from 1 ms to 1 h 23 min, then one bucket beyond.
LATENCY_BOUNDS_MS: tuple[int, ...] = tuple(m * int(10**e) for e in range(7) for m in (1, 2, 5))
LATENCY_COLUMNS = tuple(f"latency_le_{b}" for b in LATENCY_BOUNDS_MS) + ("latency_over",)
HISTORY_COUNTS = ("ingested", "processed", "failed", "retried")

# One row per minute (unix seconds, a multiple of 60) and event type. A Core table: its 26 count
# columns are made from the two lists above, and only ever added to by an upsert.
metric_minutes = Table(
    "metric_minutes",
    db.metadata,
    Column("minute", BigInteger, primary_key=True),
    Column("type", String(64), primary_key=True),
    *(
        Column(name, Integer, nullable=False, server_default="0")
        for name in HISTORY_COUNTS + LATENCY_COLUMNS
    ),
)
