"""Running bulk actions: the workers replay or discard an action's events a batch at a time.

The set is fixed when the action is created (its events' ids are bulk_action_items, see
eventflow/bulk_actions.py). A batch is one transaction: renew the lease, take up to BATCH
items, move their events (only those still FAILED), delete the items and advance `done`. So a
worker killed mid-batch leaves nothing half-done (the transaction rolls back and the items are
still there) and no event is moved by two batches (its item is gone with the batch that moved
it). Replayed events are enqueued after the commit, as every replay is.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import delete, or_, select, update

from ..config import Settings
from ..errors import is_database_outage
from ..extensions import db
from ..models import BulkAction, BulkActionItem, BulkActionStatus, Status, utcnow
from . import transitions
from .processing import worker_id
from .queue import QUEUE_ERRORS, EventQueue

logger = logging.getLogger(__name__)
BULK_TASK_KEY = "eventflow.bulk_task"
# Events per batch. A batch's transaction stays well under a second (so a cancel waits little
# and the lease, renewed every batch, never lapses under a live worker); 20,000 events took
# 7.9 s in batches of 500 and 4.7 s in batches of 2,000 here (2 busy cores): the fixed cost
# of a batch is several round trips.
BATCH = 2000
RUNNING = BulkActionStatus.RUNNING.value
TARGET = {"replay": Status.PENDING, "discard": Status.DISCARDED}


@dataclass(frozen=True)
class Batch:
    action: str
    moved: list[uuid.UUID]
    finished: bool


def init_bulk_task(app: Flask, queue: EventQueue, settings: Settings) -> None:
    """Register the task that runs a bulk action on the app's queue."""

    @queue.huey.task(name="run_bulk_action")  # type: ignore[untyped-decorator]  # huey is untyped
    def run_bulk_action_task(action_id: str) -> None:
        with app.app_context():
            run_bulk_action(uuid.UUID(action_id), queue, settings)

    app.extensions[BULK_TASK_KEY] = run_bulk_action_task


def send_bulk_action(action_id: uuid.UUID) -> bool:
    """Ask the workers to run the action; False (logged) if the queue is unreachable."""
    task: Any = current_app.extensions[BULK_TASK_KEY]
    try:
        task(str(action_id))
        return True
    except QUEUE_ERRORS as exc:
        # The action is committed and running: recovery re-sends it once its lease lapses.
        logger.warning("queue unavailable, bulk action %s left for recovery: %s", action_id, exc)
        return False


def run_bulk_action(action_id: uuid.UUID, queue: EventQueue, settings: Settings) -> None:
    """Run batches until the action is done, cancelled, or held by another worker."""
    owner, lease = worker_id(), settings.visibility_timeout_seconds
    try:
        while (batch := run_batch(action_id, owner, lease)) is not None:
            if batch.action == "replay" and batch.moved:
                queue.enqueue(batch.moved, replayed=len(batch.moved))
            if batch.finished:
                return
    except Exception as exc:
        db.session.rollback()
        if is_database_outage(exc):
            raise  # the lease lapses and recovery sends the action again
        logger.exception("bulk action %s failed", action_id)
        _mark_failed(action_id, owner)


def run_batch(action_id: uuid.UUID, owner: str, lease_seconds: float) -> Batch | None:
    """One batch in one transaction; None if the action is not running or another holds it."""
    now = utcnow()
    # Renewing the lease also locks the action's row until the commit: a cancel waits for the
    # batch in progress, and the next batch then finds the action no longer running.
    action = db.session.scalar(
        update(BulkAction)
        .where(
            BulkAction.id == action_id,
            BulkAction.status == RUNNING,
            or_(
                BulkAction.lease_owner.is_(None),
                BulkAction.lease_owner == owner,
                BulkAction.lease_expires_at < now,
            ),
        )
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(BulkAction.action)
    )
    if action is None:
        db.session.rollback()
        return None
    # Take (delete) the next items in one statement; the batch's commit makes it final.
    next_items = (
        select(BulkActionItem.event_id)
        .where(BulkActionItem.action_id == action_id)
        .order_by(BulkActionItem.event_id)
        .limit(BATCH)
    )
    ids = list(
        db.session.scalars(
            delete(BulkActionItem)
            .where(BulkActionItem.action_id == action_id, BulkActionItem.event_id.in_(next_items))
            .returning(BulkActionItem.event_id)
        )
    )
    moved = transitions.move_failed(ids, TARGET[action])
    finished = len(ids) < BATCH
    values: dict[str, object] = {"done": BulkAction.done + len(ids)}
    if finished:
        values.update(status=BulkActionStatus.COMPLETED.value, finished_at=utcnow())
        values.update(lease_owner=None, lease_expires_at=None)
    db.session.execute(update(BulkAction).where(BulkAction.id == action_id).values(**values))
    db.session.commit()
    return Batch(action, moved, finished)


def _mark_failed(action_id: uuid.UUID, owner: str) -> None:
    db.session.execute(
        update(BulkAction)
        .where(BulkAction.id == action_id, BulkAction.status == RUNNING)
        .values(status=BulkActionStatus.FAILED.value, finished_at=utcnow(), lease_owner=None)
    )
    db.session.commit()


def resume_bulk_actions(settings: Settings) -> int:
    """Re-send running actions whose lease lapsed: their worker died or their message was lost.

    The lease is pushed forward as they are sent, so a message still waiting its turn in a
    long queue is sent again at most once per visibility timeout (a duplicate does nothing:
    the first worker to renew the lease runs the action).
    """
    now = utcnow()
    ids = list(
        db.session.scalars(
            update(BulkAction)
            .where(BulkAction.status == RUNNING, BulkAction.lease_expires_at < now)
            .values(
                lease_owner=None,
                lease_expires_at=now + timedelta(seconds=settings.visibility_timeout_seconds),
            )
            .returning(BulkAction.id)
        )
    )
    db.session.commit()
    for action_id in ids:
        send_bulk_action(action_id)
    return len(ids)
