"""Re-send what the queue lost: orphaned claims and waiting events without a message.

Huey takes messages destructively, so a killed worker, a flushed or restarted Redis, or a failed
enqueue after commit all leave events the queue no longer knows. PostgreSQL still knows them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete

from ..config import Settings
from ..extensions import db
from ..metrics_history import forget_old_metrics
from ..models import ErrorGroupHour, Status, Worker, utcnow
from . import transitions
from .bulk import resume_bulk_actions
from .processing import log_attempt
from .queue import QUEUE_ERRORS, EventQueue, processor_of
from .registry import HandlerRegistry

logger = logging.getLogger(__name__)
BATCH = 1000
# A killed worker cannot remove its own heartbeat row: drop rows silent for this long.
DEAD_WORKER_SECONDS = 3600
# Error groups' hourly counts are kept this long (the Errors page reads the last 24 hours).
ERROR_HOURS_KEPT = timedelta(days=7)


@dataclass
class RecoveryReport:
    orphans_retried: int = 0
    orphans_failed: int = 0
    resent: int = 0
    bulk_actions_resent: int = 0


def recover_orphans(
    queue: EventQueue, settings: Settings, handlers: HandlerRegistry, report: RecoveryReport
) -> None:
    """PROCESSING events whose worker stopped refreshing the lock: retry them (or DLQ them, by
    their type's policy)."""
    cutoff = utcnow() - timedelta(seconds=settings.visibility_timeout_seconds)
    for event_id, number, replayed, event_type, request_id in transitions.find_orphans(
        cutoff, BATCH
    ):
        max_attempts = handlers.policy(event_type, settings).max_attempts
        status = transitions.release_orphan(
            event_id, number, cutoff, max_attempts, queue.database.finish_attempt
        )
        if status is not None:  # its attempt ran for an unknown time: no duration
            level = logging.ERROR if status == Status.FAILED.value else logging.WARNING
            attempt = number - replayed
            log_attempt(
                level, "orphaned", request_id, event_id, event_type, attempt, None, status=status
            )
        if status == Status.RETRYING.value:
            report.orphans_retried += 1
            queue.enqueue([event_id], retried=1, event_types=[event_type])
        elif status == Status.FAILED.value:
            report.orphans_failed += 1
            queue.record(failed=1, event_types=[event_type])


def resend_lost_messages(queue: EventQueue, settings: Settings, report: RecoveryReport) -> None:
    """Re-send only as many waiting events as the queue is short of messages.

    A long backlog that is simply waiting has a message per event, so nothing is re-sent and
    the queue is not flooded with duplicates. A duplicate that does slip in is harmless: the
    claim lets only one message run the event.
    """
    missing = transitions.count_waiting() - queue.messages_waiting()
    if missing <= 0:
        return
    # Events that became due moments ago may be on their way into the queue: leave them be.
    grace = min(settings.recovery_interval_seconds, settings.visibility_timeout_seconds)
    cutoff = utcnow() - timedelta(seconds=grace)
    ids = transitions.touch_waiting(cutoff, min(missing, BATCH))
    if ids:
        queue.enqueue(ids)
        report.resent += len(ids)


def forget_dead_workers() -> None:
    """Delete heartbeat rows of workers silent for long: a killed worker leaves its row behind."""
    silent_since = utcnow() - timedelta(seconds=DEAD_WORKER_SECONDS)
    db.session.execute(delete(Worker).where(Worker.last_seen_at < silent_since))
    db.session.commit()


def forget_old_error_hours() -> None:
    """Delete error groups' hourly counts past ERROR_HOURS_KEPT (their totals stay)."""
    db.session.execute(
        delete(ErrorGroupHour).where(ErrorGroupHour.hour < utcnow() - ERROR_HOURS_KEPT)
    )
    db.session.commit()


def recover(
    queue: EventQueue, settings: Settings, handlers: HandlerRegistry | None = None
) -> RecoveryReport:
    """One recovery pass; a queue outage is logged and the pass tried again next interval.

    Paused types are left alone (transitions.py). `handlers` give the types' retry policies
    (by default, the current app's).
    """
    handlers = handlers or processor_of(current_app).handlers
    report = RecoveryReport()
    try:
        recover_orphans(queue, settings, handlers, report)
        resend_lost_messages(queue, settings, report)
        report.bulk_actions_resent = resume_bulk_actions(settings)
        forget_dead_workers()
        forget_old_error_hours()
        forget_old_metrics(settings.metrics_retention_days)
    except QUEUE_ERRORS as exc:
        logger.warning("recovery skipped, queue unreachable: %s", exc)
    if any(vars(report).values()):
        logger.warning("recovery: %s", report)
    return report
