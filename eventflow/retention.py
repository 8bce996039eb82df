"""Retention: delete finished events older than a cutoff, a few thousand per transaction.

`flask events purge` and the workers' daily run (EVENTFLOW_RETENTION_DAYS) both call
purge_events. Each batch is one short transaction of at most MAX_BATCH rows, picked through the
(status, created_at) index and locked with FOR UPDATE SKIP LOCKED: a row that a worker or a
replay holds right now is left for a later batch or run, and ingest, which only inserts, never
waits on a purge. Attempts go with their events (event_attempts.event_id is ON DELETE CASCADE).
Purges are not audited (CONTRACT section 10 does not list them): each run logs one line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, CursorResult, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .errors import ApiError
from .extensions import db
from .models import Event, PeriodicRun, Status, utcnow

logger = logging.getLogger(__name__)

MAX_BATCH = 5000
# Finished events; FAILED ones (the DLQ) only when asked for by name.
PURGEABLE = (Status.PROCESSED, Status.DISCARDED, Status.FAILED)
DEFAULT_STATUSES = (Status.PROCESSED, Status.DISCARDED)
RETENTION_JOB = "retention"


@dataclass
class PurgeReport:
    """What a purge deleted (or, dry, would delete), by status."""

    cutoff: datetime
    statuses: tuple[Status, ...]
    dry_run: bool = False
    by_status: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def describe(self) -> str:
        """One line for the terminal and the log."""
        verb = "would delete" if self.dry_run else "deleted"
        counts = ", ".join(f"{s.value} {self.by_status.get(s.value, 0):,}" for s in self.statuses)
        line = f"{verb} {self.total:,} event(s) created before {self.cutoff:%Y-%m-%d %H:%M:%S} UTC"
        if not self.dry_run:
            line += f" in {self.batches:,} batch(es), {self.seconds:.1f} s"
        return f"{line} ({counts})"


def purgeable_statuses(statuses: Iterable[Status]) -> tuple[Status, ...]:
    """The statuses, if a purge may take them all; a 400 naming the first it may not."""
    chosen = tuple(dict.fromkeys(statuses))
    for status in chosen:
        if status not in PURGEABLE:
            raise ApiError(
                400,
                "status_not_purgeable",
                f"{status.value} events are never purged: they are still to be processed. "
                "Only PROCESSED, DISCARDED and FAILED events can be.",
            )
    if not chosen:
        raise ApiError(400, "status_not_purgeable", "Name at least one status to purge.")
    return chosen


def _matching(statuses: tuple[Status, ...], cutoff: datetime) -> ColumnElement[bool]:
    return and_(Event.status.in_([s.value for s in statuses]), Event.created_at < cutoff)


def purge_events(
    older_than: timedelta,
    statuses: Iterable[Status] = DEFAULT_STATUSES,
    *,
    dry_run: bool = False,
    batch_size: int = MAX_BATCH,
    after_batch: Callable[[], object] | None = None,
) -> PurgeReport:
    """Delete the events of these statuses created more than `older_than` ago (dry: count them).

    The cutoff is fixed when the purge starts, so events that age meanwhile wait for the next
    run and a purge always ends; so do rows that were locked when their batch was chosen.
    `after_batch` runs after each committed batch.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ApiError(400, "invalid_batch_size", f"A batch is 1 to {MAX_BATCH:,} events.")
    chosen = purgeable_statuses(statuses)
    report = PurgeReport(cutoff=utcnow() - older_than, statuses=chosen, dry_run=dry_run)
    where = _matching(chosen, report.cutoff)
    if dry_run:
        counted = db.session.execute(
            select(Event.status, func.count()).where(where).group_by(Event.status)
        ).all()
        db.session.rollback()
        report.by_status.update({status: count for status, count in counted})
        return report
    began = time.monotonic()
    while deleted := _delete_batch(where, batch_size):
        report.by_status.update(deleted)
        report.batches += 1
        if after_batch is not None:
            after_batch()
        if len(deleted) < batch_size:
            break  # the rest, if any, is locked right now: the next run takes it
    report.seconds = time.monotonic() - began
    logger.info("purge: %s", report.describe())
    return report


def _delete_batch(where: ColumnElement[bool], batch_size: int) -> list[str]:
    """Delete up to batch_size matching events in one transaction; their statuses."""
    # SKIP LOCKED: rows a claim, a completion or a replay holds are not waited for. The CTE is
    # materialized: as a plain IN (subquery) PostgreSQL may rescan the subquery for every row,
    # each rescan locking the next rows, and delete far more than a batch. The outer WHERE
    # repeats the condition for rows changed between the subquery's snapshot and its lock.
    chosen = (
        select(Event.id)
        .where(where)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
        .cte("chosen")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        delete(Event).where(Event.id.in_(select(chosen.c.id)), where).returning(Event.status)
    )
    try:
        statuses = list(
            db.session.execute(statement, execution_options={"synchronize_session": False})
            .scalars()
            .all()
        )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return statuses


def claim_run(job: str, interval: timedelta) -> bool:
    """Record that `job` runs now unless it ran within `interval`; True for the one caller
    that may run it (a guarded UPDATE, so two workers asking at once cannot both get True)."""
    now = utcnow()
    claimed = db.session.execute(
        update(PeriodicRun)
        .where(PeriodicRun.name == job, PeriodicRun.last_run_at <= now - interval)
        .values(last_run_at=now)
    )
    assert isinstance(claimed, CursorResult)  # what an UPDATE returns: it has the rowcount
    if claimed.rowcount:
        db.session.commit()
        return True
    if db.session.get(PeriodicRun, job) is not None:
        db.session.rollback()
        return False
    db.session.add(PeriodicRun(name=job, last_run_at=now))  # its first run ever
    try:
        db.session.commit()
    except IntegrityError:  # another worker's first run, a moment earlier
        db.session.rollback()
        return False
    return True


def last_run(job: str) -> datetime | None:
    """When `job` last started, if ever."""
    return db.session.scalar(select(PeriodicRun.last_run_at).where(PeriodicRun.name == job))


def run_retention(
    days: int, interval_seconds: float, after_batch: Callable[[], object] | None = None
) -> PurgeReport | None:
    """The workers' periodic purge of PROCESSED and DISCARDED events older than `days`, if it
    is due (once per interval across all workers); None when off or not due."""
    if days <= 0 or not claim_run(RETENTION_JOB, timedelta(seconds=interval_seconds)):
        return None
    return purge_events(timedelta(days=days), after_batch=after_batch)
