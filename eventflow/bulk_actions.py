"""Bulk actions: replay or discard every FAILED event a filter matches, tracked and cancellable.

Shared by the API and the dashboard. The workers run them a batch at a time
(eventflow/tasks/bulk.py); these use cases count, create, read, list and cancel them.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

from flask import current_app
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Uuid,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from . import audit, counts
from .errors import ApiError
from .events import EVERY_EVENT, Viewer
from .extensions import db
from .filters import EventFilter, conditions
from .models import (
    BulkAction,
    BulkActionItem,
    BulkActionStatus,
    Event,
    Role,
    Status,
    User,
    utcnow,
)
from .pages import NumberedPage
from .tasks.bulk import send_bulk_action

ACTIONS = ("replay", "discard")
AUDITED_AS = {"replay": "bulk_replay", "discard": "bulk_discard"}


BulkActionPage = NumberedPage[BulkAction]


def _matching(actor: User | None, event_filter: EventFilter) -> list[ColumnElement[bool]]:
    """The filter's conditions, narrowed to the DLQ: bulk actions touch FAILED events only."""
    if event_filter.status not in (None, Status.FAILED, Status.FAILED.value):
        raise ApiError(
            400,
            "invalid_status",
            "filter.status: bulk actions touch FAILED events only (leave status out, or FAILED)",
        )
    # The command line acts as an admin of no account (the nil id), as it lists events.
    viewer = Viewer(actor.id, actor.role) if actor else Viewer(uuid.UUID(int=0), Role.ADMIN.value)
    return [*conditions(event_filter, viewer), Event.status == Status.FAILED.value]


def count_matching(actor: User | None, event_filter: EventFilter) -> int:
    """The dry run: how many events a bulk action with this filter would touch now."""
    where = _matching(actor, event_filter)
    if replace(event_filter, status=None, type=None) == EVERY_EVENT:
        # The DLQ, or one type of it: exact from the counters. Counting its rows reads every
        # FAILED event's row, spread over the whole table: 2.7 s at 10M events (BENCHMARKS.md).
        count = counts.count_events(Status.FAILED.value, event_filter.type).count
    else:
        count = db.session.scalar(select(func.count()).select_from(Event).where(*where)) or 0
    db.session.rollback()
    return count


def create_bulk_action(
    actor: User | None,
    action: str,
    event_filter: EventFilter,
    note: str | None = None,
) -> BulkAction:
    """Fix the set of matching FAILED events, audit it, and hand it to the workers.

    The set is written down (bulk_action_items) in the transaction that counts it, rather than
    bounded by a creation time or id: events that fail after this moment must not join it
    (ingest and processing go on), and ids are random while created_at only bounds when an
    event arrived, not when it failed. So `matched` is exactly the dry run's count at this
    moment and exactly what the workers go through; an event replayed one by one meanwhile is
    skipped (the move is guarded) but counted done.
    """
    if action not in ACTIONS:
        raise ApiError(400, "invalid_action", "action must be replay or discard")
    matching = _matching(actor, event_filter)
    now = utcnow()
    settings = current_app.config["EVENTFLOW"]
    described = event_filter.as_dict()
    bulk = BulkAction(
        id=uuid.uuid4(),
        action=action,
        filter=described,
        note=note,
        matched=0,
        done=0,
        status=BulkActionStatus.RUNNING.value,
        created_by=actor.id if actor else None,
        created_at=now,
        # Sent now: recovery re-sends it if no worker has taken it by then.
        lease_expires_at=now + timedelta(seconds=settings.visibility_timeout_seconds),
    )
    db.session.add(bulk)
    db.session.flush()
    inserted = db.session.execute(
        insert(BulkActionItem).from_select(
            ["action_id", "event_id"],
            select(literal(bulk.id, Uuid), Event.id).where(*matching),
        )
    )
    assert isinstance(inserted, CursorResult)  # what an INSERT returns: it has the rowcount
    bulk.matched = inserted.rowcount
    if bulk.matched == 0:
        bulk.status, bulk.finished_at, bulk.lease_expires_at = "completed", now, None
    audit.record(
        actor,
        AUDITED_AS[action],
        target=str(bulk.id),
        filter=described,
        count=bulk.matched,
        note=note,
    )
    db.session.commit()
    if bulk.matched:
        send_bulk_action(bulk.id)
    return bulk


def get_bulk_action(action_id: uuid.UUID) -> BulkAction:
    bulk = db.session.get(BulkAction, action_id)
    if bulk is None:
        raise ApiError(404, "bulk_action_not_found", f"no bulk action with id {str(action_id)!r}")
    return bulk


def list_bulk_actions(page: int = 1, limit: int = 20) -> BulkActionPage:
    """Newest first."""
    total = db.session.scalar(select(func.count()).select_from(BulkAction)) or 0
    items = db.session.scalars(
        select(BulkAction)
        .order_by(BulkAction.created_at.desc(), BulkAction.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    return BulkActionPage(items=list(items), page=page, limit=limit, total=total)


def cancel_bulk_action(actor: User | None, action_id: uuid.UUID) -> BulkAction:
    """Stop a running action between batches: the events it has not reached stay FAILED.

    The guarded UPDATE waits for a batch in progress (which holds the action's row), so `done`
    is final once this returns. 409 if the action is no longer running.
    """
    cancelled = db.session.scalar(
        update(BulkAction)
        .where(BulkAction.id == action_id, BulkAction.status == BulkActionStatus.RUNNING.value)
        .values(
            status=BulkActionStatus.CANCELLED.value,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(BulkAction.matched - BulkAction.done)
    )
    if cancelled is None:
        db.session.rollback()
        bulk = get_bulk_action(action_id)
        raise ApiError(409, "not_running", f"the bulk action is {bulk.status}, not running")
    db.session.execute(delete(BulkActionItem).where(BulkActionItem.action_id == action_id))
    # The count is what the cancel left untouched.
    audit.record(actor, "bulk_cancel", target=str(action_id), count=cancelled)
    db.session.commit()
    return get_bulk_action(action_id)
