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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, insert, or_, select, text, tuple_, update

from ..extensions import db
from ..models import Event, EventAttempt, Outcome, Status, utcnow

WAITING = (Status.PENDING.value, Status.RETRYING.value)
REPLAY_BATCH = 500
# A claimed event as a row: (id, type, payload, user_id, created_at, attempts, replayed_attempts).
ClaimRow = tuple[uuid.UUID, str, dict[str, Any], uuid.UUID, datetime, int, int, str | None]


@dataclass(frozen=True)
class ClaimedEvent:
    """What a worker holds after a successful claim; handlers see it as `event`."""

    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    user_id: uuid.UUID
    created_at: datetime
    number: int  # this attempt's number over the event's whole life (event_attempts.number)
    attempt: int  # 1-based attempt within the current run (reset by a replay)
    request_id: str | None = None  # the X-Request-ID of the request that created the event


# One statement, so a batch's claim is one round trip whatever its size: the guarded UPDATE
# takes the due waiting events among the ids (an array parameter, not one bind per id) and
# opens an attempt row for each event it took. The guard is a CASE on purpose: written as
# plain conditions it lets the planner scan recovery's partial index of waiting events (the
# whole backlog, for every claim) when its statistics are stale; this way only the ids can
# find the rows, by primary key, however long the backlog.
CLAIM = text(
    """
    WITH claimed AS (
        UPDATE events
        SET status = 'PROCESSING', attempts = attempts + 1, locked_at = :now, locked_by = :worker
        WHERE id = ANY(CAST(:ids AS uuid[]))
          AND CASE WHEN status IN ('PENDING', 'RETRYING')
                   THEN next_attempt_at IS NULL OR next_attempt_at <= :now
                   ELSE false END
        RETURNING id, type, payload, user_id, created_at, attempts, replayed_attempts, request_id
    ), opened AS (
        INSERT INTO event_attempts (event_id, number, worker, started_at, outcome)
        SELECT id, attempts, :worker, :now, 'running' FROM claimed
    )
    SELECT CAST(id AS text), type, payload, CAST(user_id AS text), created_at, attempts,
           replayed_attempts, request_id
    FROM claimed
    """
)


def claim_events(event_ids: list[uuid.UUID], worker_id: str) -> list[ClaimedEvent]:
    """Atomically take the due PENDING/RETRYING events among these and open an attempt for each.

    One transaction however many: the others (processed, claimed, not due) are not returned.
    PostgreSQL: one statement (CLAIM); SQLite uses claim_events_portable (eventflow/backend.py).
    """
    # The ids go as one array literal and come back as text: turning 500 ids per batch back
    # into UUID objects was the largest cost of a claim, and we hold those objects already.
    asked = {str(event_id): event_id for event_id in event_ids}
    rows = db.session.execute(
        CLAIM, {"ids": "{" + ",".join(asked) + "}", "now": utcnow(), "worker": worker_id}
    ).all()
    db.session.commit()
    return _in_message_order(_with_uuids(rows, asked), event_ids)


def _with_uuids(rows: Iterable[Row[Any]], asked: dict[str, uuid.UUID]) -> Iterator[ClaimRow]:
    """The claim's rows with each id the UUID asked for, and each user id parsed once."""
    users: dict[str, uuid.UUID] = {}
    for event_id, type_, payload, user_id, created_at, attempts, replayed, request_id in rows:
        if user_id not in users:
            users[user_id] = uuid.UUID(user_id)
        yield (
            asked[event_id],
            type_,
            payload,
            users[user_id],
            created_at,
            attempts,
            replayed,
            request_id,
        )


def claim_events_portable(event_ids: list[uuid.UUID], worker_id: str) -> list[ClaimedEvent]:
    """claim_events for SQLite (the embedded default), with SQLAlchemy's portable statements."""
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
            Event.request_id,
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
    return _in_message_order(rows, event_ids)


def _in_message_order(
    rows: Iterable[Sequence[Any]], event_ids: list[uuid.UUID]
) -> list[ClaimedEvent]:
    """Claims from (id, type, payload, user_id, created_at, attempts, replayed, request_id) rows."""
    order = {event_id: index for index, event_id in enumerate(event_ids)}
    # Positional, as the rows come: per event, attribute access by name cost as much as the
    # rest of building the claim.
    claims = [
        ClaimedEvent(
            event_id, type_, payload, user_id, created_at, number, number - replayed, request_id
        )
        for event_id, type_, payload, user_id, created_at, number, replayed, request_id in rows
    ]
    claims.sort(key=lambda claimed: order[claimed.id])
    return claims


def _close_attempt(
    event_id: uuid.UUID,
    number: int,
    outcome: Outcome,
    now: datetime,
    error: str | None = None,
    traceback: str | None = None,
) -> None:
    db.session.execute(
        update(EventAttempt)
        .where(EventAttempt.event_id == event_id, EventAttempt.number == number)
        .values(outcome=outcome.value, finished_at=now, error=error, traceback=traceback)
    )


def _held(event_id: uuid.UUID, number: int) -> tuple[ColumnElement[bool], ...]:
    """The guard for a worker's own claim: still PROCESSING under the same attempt."""
    return (Event.id == event_id, Event.status == Status.PROCESSING.value, Event.attempts == number)


def _all_held(claims: list[ClaimedEvent]) -> tuple[ColumnElement[bool], ...]:
    """_held for many claims at once."""
    return (
        Event.status == Status.PROCESSING.value,
        tuple_(Event.id, Event.attempts).in_([(c.id, c.number) for c in claims]),
    )


def _attempts_of(claims: list[ClaimedEvent]) -> ColumnElement[bool]:
    """The event_attempts rows these claims opened."""
    return tuple_(EventAttempt.event_id, EventAttempt.number).in_(
        [(c.id, c.number) for c in claims]
    )


# One statement for a whole batch of successes: each (id, attempt number, result) of the JSON
# array is guarded as _held is (still PROCESSING under the same attempt); its attempt row is
# closed in the same statement. A result is stored as the JSON it is (`null` included). It
# returns only the ids it could not record (claims lost meanwhile): normally none.
COMPLETE = text(
    """
    WITH d AS (
        SELECT x->>0 AS id, CAST(x->>1 AS integer) AS number, x->2 AS result
        FROM jsonb_array_elements(CAST(:done AS jsonb)) AS x
    ), done AS (
        UPDATE events e
        SET status = 'PROCESSED', result = d.result, processed_at = :now,
            locked_at = NULL, locked_by = NULL
        FROM d
        WHERE e.id = CAST(d.id AS uuid) AND e.attempts = d.number AND e.status = 'PROCESSING'
        RETURNING e.id, e.attempts
    ), closed AS (
        UPDATE event_attempts a
        SET outcome = 'succeeded', finished_at = :now
        FROM done
        WHERE a.event_id = done.id AND a.number = done.attempts
    )
    SELECT d.id FROM d WHERE CAST(d.id AS uuid) NOT IN (SELECT id FROM done)
    """
)


def complete_events(done: list[tuple[ClaimedEvent, str]]) -> dict[uuid.UUID, float]:
    """Mark PROCESSED with their results (JSON text), in one transaction; lost claims are skipped.

    Returns the latency in ms of each event recorded. PostgreSQL: one statement (COMPLETE);
    SQLite uses complete_events_portable (eventflow/backend.py).
    """
    now = utcnow()
    # Ids and numbers need no escaping; each result is already valid JSON text.
    batch = ",".join(f'["{c.id}",{c.number},{result}]' for c, result in done)
    lost = set(db.session.scalars(COMPLETE, {"done": f"[{batch}]", "now": now}))
    db.session.commit()
    kept = [c for c, _ in done if not lost or str(c.id) not in lost]
    return _latencies(kept, now)


def complete_events_portable(done: list[tuple[ClaimedEvent, str]]) -> dict[uuid.UUID, float]:
    """complete_events for SQLite, with SQLAlchemy's portable statements."""
    now = utcnow()
    by_result: dict[str, list[ClaimedEvent]] = {}
    for claimed, result in done:
        by_result.setdefault(result, []).append(claimed)
    recorded: set[uuid.UUID] = set()
    for result, claims in by_result.items():
        recorded.update(
            db.session.scalars(
                update(Event)
                .where(*_all_held(claims))
                .values(
                    status=Status.PROCESSED.value,
                    result=json.loads(result),
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
    return _latencies(kept, now)


def _latencies(claims: list[ClaimedEvent], now: datetime) -> dict[uuid.UUID, float]:
    """Each event's time from ingest to its completion, in ms."""
    return {c.id: (now - c.created_at).total_seconds() * 1000.0 for c in claims}


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


def _finish_attempt(
    event_id: uuid.UUID,
    number: int,
    status: Status,
    outcome: Outcome,
    error: str,
    traceback: str | None = None,
    *,
    due_in: float | None = None,
    and_where: tuple[ColumnElement[bool], ...] = (),
) -> bool:
    """Close a held claim: move the event to `status`, unlocked, and record its attempt's outcome.

    The guarded UPDATE (still PROCESSING under this attempt, and `and_where`) decides: False, with
    nothing changed, if the claim was lost meanwhile. `due_in` seconds from now is when the event
    is due again (None leaves next_attempt_at as it is).
    """
    now = utcnow()
    values: dict[str, object] = {"status": status.value, "last_error": error}
    if due_in is not None:
        values["next_attempt_at"] = now + timedelta(seconds=due_in)
    moved = db.session.execute(
        update(Event)
        .where(*_held(event_id, number), *and_where)
        .values(**values, locked_at=None, locked_by=None)
        .returning(Event.id)
    ).one_or_none()
    if moved is None:
        db.session.rollback()
        return False
    _close_attempt(event_id, number, outcome, now, error, traceback)
    db.session.commit()
    return True


def schedule_retry(claimed: ClaimedEvent, error: str, traceback: str, delay: float) -> bool:
    """Put the event in RETRYING until now + delay; False if the claim was lost meanwhile."""
    return _finish_attempt(
        claimed.id,
        claimed.number,
        Status.RETRYING,
        Outcome.RETRY,
        error,
        traceback,
        due_in=delay,
    )


def fail_event(claimed: ClaimedEvent, error: str, traceback: str) -> bool:
    """Move the event to FAILED (the DLQ); False if the claim was lost meanwhile."""
    return _finish_attempt(
        claimed.id, claimed.number, Status.FAILED, Outcome.FAILED, error, traceback
    )


def replay_events(event_ids: list[uuid.UUID], *, commit: bool = True) -> list[uuid.UUID]:
    """FAILED -> PENDING with a fresh retry budget; attempt history is kept. Returns those moved.

    `commit=False` leaves the transaction open for the caller to add to (the audit entry).
    """
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
    if commit:
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
    # Due at once: a retry goes back to the queue now (and a failure's due time is unused).
    released = _finish_attempt(
        event_id,
        number,
        new_status,
        Outcome.LOST,
        error,
        due_in=0,
        and_where=(Event.locked_at < cutoff,),
    )
    return new_status.value if released else None


def find_orphans(cutoff: datetime, limit: int) -> list[tuple[uuid.UUID, int, int, str, str | None]]:
    """PROCESSING events whose lock has not been refreshed since the cutoff.

    Rows of (id, attempts, replayed_attempts, type, request_id): the last three for the log.
    """
    rows = db.session.execute(
        select(Event.id, Event.attempts, Event.replayed_attempts, Event.type, Event.request_id)
        .where(Event.status == Status.PROCESSING.value, Event.locked_at < cutoff)
        .order_by(Event.locked_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


def count_waiting() -> int:
    """Events that should have a message in the queue (or its schedule)."""
    waiting = db.session.scalar(
        select(func.count()).select_from(Event).where(Event.status.in_(WAITING))
    )
    return waiting or 0


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
