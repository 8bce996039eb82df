"""Event types as ops see them: paused or not, their retry policy, their events by status.

Pausing a type keeps its events accepted and waiting: the claim skips them and recovery leaves
them alone (tasks/transitions.py). Resuming re-sends the type's waiting events itself rather
than leaving that to recovery: the workers dropped their messages while it was paused, and
recovery would only notice on its next pass (30 s by default), re-send at most a batch per
pass, and only as many as the whole queue is short of. A message still queued from before the
pause becomes a duplicate, which the claim makes harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from . import audit
from .counts import count_by_type_and_status
from .extensions import db
from .models import PausedType, Status, User, utcnow
from .tasks import transitions
from .tasks.queue import get_queue, processor_of
from .tasks.registry import RetryPolicy

# The statuses GET /types counts (DISCARDED events are out of the way for good).
COUNTED = (Status.PENDING, Status.PROCESSING, Status.RETRYING, Status.FAILED, Status.PROCESSED)
REQUEUE_BATCH = 1000


@dataclass(frozen=True)
class TypeView:
    """One event type: whether it is paused (by whom, since when), its policy and its counts."""

    type: str
    paused_by: str | None
    paused_at: datetime | None
    policy: RetryPolicy
    counts: dict[str, int]  # by lower-case status, every COUNTED status present

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def list_types() -> list[TypeView]:
    """Every type that has a handler, has events, or is paused, by name."""
    counts = count_by_type_and_status()
    paused = {row.type: row for row in db.session.scalars(select(PausedType))}
    names = set(processor_of(current_app).handlers.event_types()) | set(counts) | set(paused)
    return [_view(name, paused.get(name), counts.get(name, {})) for name in sorted(names)]


def get_type(event_type: str) -> TypeView:
    """One type (any valid name: a type with no handler and no events is simply idle)."""
    counts = count_by_type_and_status().get(event_type, {})
    return _view(event_type, db.session.get(PausedType, event_type), counts)


def pause_type(actor: User | None, event_type: str) -> TypeView:
    """Stop the workers taking the type's events (audited; actor None: the CLI). Pausing a
    paused type changes nothing, and keeps who paused it first."""
    if db.session.get(PausedType, event_type) is None:
        by = actor.email if actor is not None else audit.COMMAND_LINE
        db.session.add(PausedType(type=event_type, paused_by=by, paused_at=utcnow()))
        audit.record(actor, "pause", target=event_type)
        try:
            db.session.commit()
        except IntegrityError:  # another admin paused it at the same moment: theirs stands
            db.session.rollback()
    return get_type(event_type)


def resume_type(actor: User | None, event_type: str) -> tuple[TypeView, int]:
    """Let the workers take the type's events again (audited) and send them its waiting events;
    returns the type and how many were sent. Resuming a type not paused changes nothing."""
    resumed = db.session.scalar(
        delete(PausedType).where(PausedType.type == event_type).returning(PausedType.type)
    )
    if resumed is None:
        db.session.rollback()
        return get_type(event_type), 0
    audit.record(actor, "resume", target=event_type)
    db.session.commit()
    return get_type(event_type), _send_waiting(event_type)


def _send_waiting(event_type: str) -> int:
    """Queue the type's waiting events: due ones now, retries at their due time."""
    queue, sent = get_queue(), 0
    for batch in transitions.waiting_of_type(event_type, REQUEUE_BATCH):
        now = utcnow()
        later = [(event_id, due) for event_id, due in batch if due is not None and due > now]
        queue.enqueue([event_id for event_id, due in batch if due is None or due <= now])
        for event_id, due in later:
            queue.enqueue_later(event_id, (due - now).total_seconds())
        sent += len(batch)
    return sent


def _view(event_type: str, paused: PausedType | None, counts: dict[str, int]) -> TypeView:
    settings = current_app.config["EVENTFLOW"]
    policy = processor_of(current_app).handlers.policy(event_type, settings)
    return TypeView(
        type=event_type,
        paused_by=paused.paused_by if paused is not None else None,
        paused_at=paused.paused_at if paused is not None else None,
        policy=policy,
        counts={status.lower(): counts.get(status.value, 0) for status in COUNTED},
    )
