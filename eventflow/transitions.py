"""The event status machine. Every move is a guarded UPDATE, so racing workers cannot both win.

PENDING -> PROCESSING -> PROCESSED
PROCESSING -> PENDING | RETRYING              (a claim given back before its handler started)
PROCESSING -> RETRYING -> PROCESSING ...      (a failed attempt with budget left)
PROCESSING -> FAILED (the DLQ) -> PENDING     (out of attempts or permanent; replay)
PROCESSING -> RETRYING | FAILED               (recovery: the worker holding it died)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, tuple_, update

from .extensions import db
from .models import Event, EventAttempt, Outcome, Status, utcnow

WAITING = (Status.PENDING.value, Status.RETRYING.value)
REPLAY_BATCH = 500


@dataclass(frozen=True)
class ClaimedEvent:
    """What a worker holds after a successful claim; handlers see it as `event`."""

    id: uuid.UUID
    type: str
    payload: dict
    user_id: uuid.UUID
    created_at: datetime
    number: int  # this attempt's number over the event's whole life (event_attempts.number)
    attempt: int  # 1-based attempt within the current run (reset by a replay)


def claim_events(event_ids: list[uuid.UUID], worker_id: str) -> list[ClaimedEvent]:
    """Atomically take the due PENDING/RETRYING events among these and open an attempt for each.

    One transaction however many: the others (processed, claimed, not due) are not returned.
    """
    now = utcnow()
    rows = db.session.execute(
        update(Event)
        .where(
            Event.id.in_(event_ids),
            Event.status.in_(WAITING),
            or_(Event.next_attempt_at.is_(None), Event.next_attempt_at <= now),
        )
        .values(
            status=Status.PROCESSING.value,
            attempts=Event.attempts + 1,
            locked_at=now,
            locked_by=worker_id,
        )
        .returning(
            Event.id,
            Event.type,
            Event.payload,
            Event.user_id,
            Event.created_at,
            Event.attempts,
            Event.replayed_attempts,
        ),
        execution_options={"synchronize_session": False},
    ).all()
    if not rows:
        db.session.rollback()
        return []
    db.session.execute(
        insert(EventAttempt),
        [dict(event_id=r.id, number=r.attempts, worker=worker_id, started_at=now) for r in rows],
    )
    db.session.commit()
    order = {event_id: index for index, event_id in enumerate(event_ids)}
    claims = [
        ClaimedEvent(
            id=r.id,
            type=r.type,
            payload=r.payload,
            user_id=r.user_id,
            created_at=r.created_at,
            number=r.attempts,
            attempt=r.attempts - r.replayed_attempts,
        )
        for r in rows
    ]
    return sorted(claims, key=lambda claimed: order[claimed.id])


def _close_attempt(event_id, number, outcome: Outcome, now, error=None, traceback=None) -> None:
    db.session.execute(
        update(EventAttempt)
        .where(EventAttempt.event_id == event_id, EventAttempt.number == number)
        .values(outcome=outcome.value, finished_at=now, error=error, traceback=traceback)
    )


def _held(event_id, number):
    """The guard for a worker's own claim: still PROCESSING under the same attempt."""
    return (Event.id == event_id, Event.status == Status.PROCESSING.value, Event.attempts == number)


def _all_held(claims: list[ClaimedEvent]):
    """_held for many claims at once."""
    return (
        Event.status == Status.PROCESSING.value,
        tuple_(Event.id, Event.attempts).in_([(c.id, c.number) for c in claims]),
    )


def _attempts_of(claims: list[ClaimedEvent]):
    """The event_attempts rows these claims opened."""
    return tuple_(EventAttempt.event_id, EventAttempt.number).in_(
        [(c.id, c.number) for c in claims]
    )


def complete_events(done: list[tuple[ClaimedEvent, Any]]) -> dict[uuid.UUID, float]:
    """Mark PROCESSED with their results, in one transaction; claims lost meanwhile are skipped.

    Returns the latency in ms of each event recorded. Events with equal results share a statement.
    """
    now = utcnow()
    by_result: dict[str, tuple[Any, list[ClaimedEvent]]] = {}
    for claimed, result in done:
        key = json.dumps(result, sort_keys=True)
        by_result.setdefault(key, (result, []))[1].append(claimed)
    recorded: set[uuid.UUID] = set()
    for result, claims in by_result.values():
        recorded.update(
            db.session.scalars(
                update(Event)
                .where(*_all_held(claims))
                .values(
                    status=Status.PROCESSED.value,
                    result=result,
                    processed_at=now,
                    locked_at=None,
                    locked_by=None,
                )
                .returning(Event.id),
                execution_options={"synchronize_session": False},
            )
        )
    if not recorded:
        db.session.rollback()
        return {}
    kept = [claimed for claimed, _ in done if claimed.id in recorded]
    db.session.execute(
        update(EventAttempt)
        .where(_attempts_of(kept))
        .values(outcome=Outcome.SUCCEEDED.value, finished_at=now),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()
    return {c.id: (now - c.created_at).total_seconds() * 1000.0 for c in kept}


def release_claims(claims: list[ClaimedEvent]) -> list[uuid.UUID]:
    """Give back claims whose handler never started: they wait again, as if never claimed."""
    released: list[uuid.UUID] = []
    for status, group in (
        (Status.PENDING, [c for c in claims if c.attempt == 1]),
        (Status.RETRYING, [c for c in claims if c.attempt > 1]),
    ):
        if group:
            released += db.session.scalars(
                update(Event)
                .where(*_all_held(group))
                .values(
                    status=status.value,
                    attempts=Event.attempts - 1,
                    locked_at=None,
                    locked_by=None,
                )
                .returning(Event.id),
                execution_options={"synchronize_session": False},
            ).all()
    gone = [c for c in claims if c.id in set(released)]
    if gone:
        db.session.execute(delete(EventAttempt).where(_attempts_of(gone)))
    db.session.commit()
    return released


def schedule_retry(claimed: ClaimedEvent, error: str, traceback: str, delay: float) -> bool:
    """Put the event in RETRYING until now + delay; False if the claim was lost meanwhile."""
    now = utcnow()
    done = db.session.execute(
        update(Event)
        .where(*_held(claimed.id, claimed.number))
        .values(
            status=Status.RETRYING.value,
            last_error=error,
            next_attempt_at=now + timedelta(seconds=delay),
            locked_at=None,
            locked_by=None,
        )
        .returning(Event.id)
    ).one_or_none()
    if done is None:
        db.session.rollback()
        return False
    _close_attempt(claimed.id, claimed.number, Outcome.RETRY, now, error, traceback)
    db.session.commit()
    return True


def fail_event(claimed: ClaimedEvent, error: str, traceback: str) -> bool:
    """Move the event to FAILED (the DLQ); False if the claim was lost meanwhile."""
    now = utcnow()
    done = db.session.execute(
        update(Event)
        .where(*_held(claimed.id, claimed.number))
        .values(status=Status.FAILED.value, last_error=error, locked_at=None, locked_by=None)
        .returning(Event.id)
    ).one_or_none()
    if done is None:
        db.session.rollback()
        return False
    _close_attempt(claimed.id, claimed.number, Outcome.FAILED, now, error, traceback)
    db.session.commit()
    return True


def replay_events(event_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """FAILED -> PENDING with a fresh retry budget; attempt history is kept. Returns those moved."""
    if not event_ids:
        return []
    now = utcnow()
    moved = db.session.scalars(
        update(Event)
        .where(Event.id.in_(event_ids), Event.status == Status.FAILED.value)
        .values(
            status=Status.PENDING.value,
            replayed_attempts=Event.attempts,
            next_attempt_at=now,
            processed_at=None,
            result=None,
        )
        .returning(Event.id)
    ).all()
    db.session.commit()
    return list(moved)


def replay_failed_in_batches(event_type: str | None = None) -> Iterator[list[uuid.UUID]]:
    """Replay the DLQ as it stands now (of one type if given), a batch at a time."""
    query = select(Event.id).where(Event.status == Status.FAILED.value)
    if event_type:
        query = query.where(Event.type == event_type)
    ids = list(db.session.scalars(query.order_by(Event.created_at)))
    db.session.rollback()
    for start in range(0, len(ids), REPLAY_BATCH):
        moved = replay_events(ids[start : start + REPLAY_BATCH])
        if moved:
            yield moved


def release_orphan(
    event_id: uuid.UUID, number: int, cutoff: datetime, max_attempts: int
) -> str | None:
    """Recover an event whose worker died: close its attempt as lost, then retry or fail it.

    The attempt counts against the budget, so an event that kills its worker every time
    ends in the DLQ instead of looping. Returns the new status, or None if it was not orphaned.
    """
    now = utcnow()
    event = db.session.execute(
        select(Event.attempts, Event.replayed_attempts).where(
            Event.id == event_id,
            Event.status == Status.PROCESSING.value,
            Event.attempts == number,
            Event.locked_at < cutoff,
        )
    ).one_or_none()
    if event is None:
        db.session.rollback()
        return None
    exhausted = event.attempts - event.replayed_attempts >= max_attempts
    new_status = Status.FAILED if exhausted else Status.RETRYING
    error = "worker lost while processing (no heartbeat within the visibility timeout)"
    done = db.session.execute(
        update(Event)
        .where(*_held(event_id, number), Event.locked_at < cutoff)
        .values(
            status=new_status.value,
            last_error=error,
            next_attempt_at=now,
            locked_at=None,
            locked_by=None,
        )
        .returning(Event.id)
    ).one_or_none()
    if done is None:
        db.session.rollback()
        return None
    _close_attempt(event_id, number, Outcome.LOST, now, error)
    db.session.commit()
    return new_status.value


def find_orphans(cutoff: datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
    """PROCESSING events whose lock has not been refreshed since the cutoff."""
    rows = db.session.execute(
        select(Event.id, Event.attempts)
        .where(Event.status == Status.PROCESSING.value, Event.locked_at < cutoff)
        .order_by(Event.locked_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    return [(row.id, row.attempts) for row in rows]


def count_waiting() -> int:
    """Events that should have a message in the queue (or its schedule)."""
    return db.session.scalar(
        select(func.count()).select_from(Event).where(Event.status.in_(WAITING))
    )


def touch_waiting(cutoff: datetime, limit: int) -> list[uuid.UUID]:
    """Take the longest-waiting events due before the cutoff and mark them as re-sent now.

    Moving next_attempt_at forward means the next recovery pass picks other events.
    """
    now = utcnow()
    ids = list(
        db.session.scalars(
            select(Event.id)
            .where(Event.status.in_(WAITING), Event.next_attempt_at < cutoff)
            .order_by(Event.next_attempt_at)
            .limit(limit)
        )
    )
    if ids:
        # Re-check the due time: an event claimed and put back in RETRYING since the SELECT
        # keeps its new backoff (and gets no early message).
        ids = list(
            db.session.scalars(
                update(Event)
                .where(Event.id.in_(ids), Event.status.in_(WAITING), Event.next_attempt_at < cutoff)
                .values(next_attempt_at=now)
                .returning(Event.id)
            )
        )
    db.session.commit()
    return ids


def refresh_locks(event_ids: list[uuid.UUID], worker_id: str) -> None:
    """A live worker's heartbeat: keep its claims fresh so recovery leaves them alone."""
    if not event_ids:
        return
    db.session.execute(
        update(Event)
        .where(
            Event.id.in_(event_ids),
            Event.status == Status.PROCESSING.value,
            Event.locked_by == worker_id,
        )
        .values(locked_at=utcnow())
    )
    db.session.commit()
