"""The event status machine. Every move is a guarded UPDATE, so racing workers cannot both win.

PENDING -> PROCESSING -> PROCESSED
PROCESSING -> PENDING | RETRYING              (a claim given back before its handler started)
PROCESSING -> RETRYING -> PROCESSING ...      (a failed attempt with budget left)
PROCESSING -> FAILED (the DLQ) -> PENDING     (out of attempts or permanent; replay)
FAILED -> DISCARDED                           (discard: terminal, kept, out of the DLQ)
PROCESSING -> RETRYING | FAILED               (recovery: the worker holding it died)

Events of a paused type (paused_types) wait: the claim skips them and recovery neither re-sends
nor releases them, so nothing moves them until the type is resumed. One already PROCESSING
when the pause lands finishes as it would have.

Every failed attempt is counted into its error group (fingerprints.py) by the same statement
that moves its event (FINISH), and the event keeps the group of its latest failure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..extensions import db
from ..models import (
    ErrorGroup,
    ErrorGroupHour,
    ErrorGroupType,
    Event,
    EventAttempt,
    GroupStatus,
    Outcome,
    PausedType,
    PayloadVersion,
    Status,
    utcnow,
)
from . import fingerprints
from .fingerprints import Fingerprint

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
# find the rows, by primary key, however long the backlog. Paused types are skipped with one
# look at their small table per statement (a hashed subplan), not a query per event.
CLAIM = text(
    """
    WITH claimed AS (
        UPDATE events
        SET status = 'PROCESSING', attempts = attempts + 1, locked_at = :now, locked_by = :worker
        WHERE id = ANY(CAST(:ids AS uuid[]))
          AND CASE WHEN status IN ('PENDING', 'RETRYING')
                   THEN next_attempt_at IS NULL OR next_attempt_at <= :now
                   ELSE false END
          AND type NOT IN (SELECT type FROM paused_types)
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


def not_paused() -> ColumnElement[bool]:
    """The event's type is not paused."""
    return Event.type.not_in(select(PausedType.type))


def claim_events(event_ids: list[uuid.UUID], worker_id: str) -> list[ClaimedEvent]:
    """Atomically take the due PENDING/RETRYING events among these (of types not paused) and
    open an attempt for each.

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
            not_paused(),
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


def _close_attempt(end: AttemptEnd, now: datetime, group_id: int | None) -> None:
    db.session.execute(
        update(EventAttempt)
        .where(EventAttempt.event_id == end.event_id, EventAttempt.number == end.number)
        .values(
            outcome=end.outcome.value,
            finished_at=now,
            error=end.failure.error,
            traceback=end.failure.traceback,
            error_group_id=group_id,
        )
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


@dataclass(frozen=True)
class Failure:
    """A failed attempt as recorded: its error line, traceback and error group's fingerprint."""

    error: str
    traceback: str | None
    fingerprint: Fingerprint


WORKER_LOST = Failure(fingerprints.LOST_MESSAGE, None, fingerprints.LOST)


@dataclass(frozen=True)
class AttemptEnd:
    """How a held claim ends in failure: the event's next status and its attempt's outcome.

    The move is guarded (still PROCESSING under this attempt; with `locked_before`, also not
    locked since then): if the claim was lost meanwhile, nothing changes. `due_in` seconds from
    now is when the event is due again (None leaves next_attempt_at as it is).
    """

    event_id: uuid.UUID
    number: int
    event_type: str
    status: Status
    outcome: Outcome
    failure: Failure
    due_in: float | None = None
    locked_before: datetime | None = None


def retry_later(claimed: ClaimedEvent, failure: Failure, delay: float) -> AttemptEnd:
    """RETRYING until now + delay."""
    return AttemptEnd(
        claimed.id, claimed.number, claimed.type, Status.RETRYING, Outcome.RETRY, failure, delay
    )


def to_dlq(claimed: ClaimedEvent, failure: Failure) -> AttemptEnd:
    """FAILED: the DLQ."""
    return AttemptEnd(
        claimed.id, claimed.number, claimed.type, Status.FAILED, Outcome.FAILED, failure
    )


def _end_values(end: AttemptEnd, now: datetime) -> dict[str, Any]:
    fingerprint = end.failure.fingerprint
    return {
        "event_id": str(end.event_id),
        "number": end.number,
        "type": end.event_type,
        "status": end.status.value,
        "outcome": end.outcome.value,
        "error": end.failure.error,
        "traceback": end.failure.traceback,
        "fingerprint": fingerprint.digest,
        "exception": fingerprint.exception[:255],
        "message": fingerprint.message,
        "frame": fingerprint.frame[:255],
        "now": now,
        "hour": now.replace(minute=0, second=0, microsecond=0),
        "due": None if end.due_in is None else now + timedelta(seconds=end.due_in),
        "locked_before": end.locked_before,
    }


# One statement per failed attempt, so grouping costs no round trip of its own: the error
# group is created or counted (a resolved one reopens), with its per-type and per-hour counts,
# and the guarded move of the event and the close of its attempt both point at it. When the
# claim was lost, `moved` is empty and the caller rolls the whole statement back. Each failure
# locks its group's row until commit: failures of one error commit one after another.
FINISH = text(
    """
    WITH grp AS (
        INSERT INTO error_groups AS g (fingerprint, exception, message, frame, status, count,
                                       first_seen, last_seen, sample_error, sample_traceback)
        VALUES (:fingerprint, :exception, :message, :frame, 'open', 1, :now, :now, :error,
                :traceback)
        ON CONFLICT (fingerprint) DO UPDATE
        SET count = g.count + 1, last_seen = GREATEST(g.last_seen, EXCLUDED.last_seen),
            status = CASE WHEN g.status = 'resolved' THEN 'open' ELSE g.status END
        RETURNING g.id
    ), per_type AS (
        INSERT INTO error_group_types AS t (group_id, type, count) SELECT id, :type, 1 FROM grp
        ON CONFLICT (group_id, type) DO UPDATE SET count = t.count + 1
    ), per_hour AS (
        INSERT INTO error_group_hours AS h (group_id, hour, count) SELECT id, :hour, 1 FROM grp
        ON CONFLICT (group_id, hour) DO UPDATE SET count = h.count + 1
    ), moved AS (
        UPDATE events
        SET status = :status, last_error = :error, locked_at = NULL, locked_by = NULL,
            next_attempt_at = COALESCE(CAST(:due AS timestamptz), next_attempt_at),
            error_group_id = (SELECT id FROM grp)
        WHERE id = CAST(:event_id AS uuid) AND status = 'PROCESSING' AND attempts = :number
          AND (CAST(:locked_before AS timestamptz) IS NULL OR locked_at < :locked_before)
        RETURNING id
    ), closed AS (
        UPDATE event_attempts
        SET outcome = :outcome, finished_at = :now, error = :error, traceback = :traceback,
            error_group_id = (SELECT id FROM grp)
        WHERE event_id = (SELECT id FROM moved) AND number = :number
    )
    SELECT id FROM moved
    """
)


def finish_attempt(end: AttemptEnd) -> bool:
    """Record a failed attempt and move its event; False, with nothing changed, if the claim
    was lost meanwhile. PostgreSQL: one statement (FINISH); SQLite uses finish_attempt_portable.
    """
    moved = db.session.execute(FINISH, _end_values(end, utcnow())).one_or_none()
    if moved is None:
        db.session.rollback()
        return False
    db.session.commit()
    return True


def finish_attempt_portable(end: AttemptEnd) -> bool:
    """finish_attempt for SQLite, a statement at a time (its upserts are SQLite's)."""
    values = _end_values(end, utcnow())
    now = values["now"]
    guard = [*_held(end.event_id, end.number)]
    if end.locked_before is not None:
        guard.append(Event.locked_at < end.locked_before)
    moved = db.session.execute(
        update(Event)
        .where(*guard)
        .values(
            status=end.status.value,
            last_error=end.failure.error,
            locked_at=None,
            locked_by=None,
            **({"next_attempt_at": values["due"]} if values["due"] is not None else {}),
        )
        .returning(Event.id)
    ).one_or_none()
    if moved is None:
        db.session.rollback()
        return False
    group = sqlite_insert(ErrorGroup).values(
        fingerprint=values["fingerprint"],
        exception=values["exception"],
        message=values["message"],
        frame=values["frame"],
        status=GroupStatus.OPEN.value,
        count=1,
        first_seen=now,
        last_seen=now,
        sample_error=end.failure.error,
        sample_traceback=end.failure.traceback,
    )
    group_id = db.session.scalar(
        group.on_conflict_do_update(
            index_elements=[ErrorGroup.fingerprint],
            set_={
                "count": ErrorGroup.count + 1,
                "last_seen": now,
                "status": case(
                    (ErrorGroup.status == GroupStatus.RESOLVED.value, GroupStatus.OPEN.value),
                    else_=ErrorGroup.status,
                ),
            },
        ).returning(ErrorGroup.id)
    )
    for table, key in (
        (ErrorGroupType, {"type": end.event_type}),
        (ErrorGroupHour, {"hour": values["hour"]}),
    ):
        db.session.execute(
            sqlite_insert(table)
            .values(group_id=group_id, count=1, **key)
            .on_conflict_do_update(
                index_elements=[table.group_id, *key], set_={"count": table.count + 1}
            )
        )
    db.session.execute(
        update(Event).where(Event.id == end.event_id).values(error_group_id=group_id)
    )
    _close_attempt(end, now, group_id)
    db.session.commit()
    return True


def replay_events(
    event_ids: list[uuid.UUID], *also: ColumnElement[bool], commit: bool = True
) -> list[uuid.UUID]:
    """FAILED -> PENDING with a fresh retry budget; attempt history is kept. Returns those moved.

    `also`: conditions the events must still meet when they move (they were chosen by them).
    `commit=False` leaves the transaction open for the caller to add to (the audit entry).
    """
    moved = move_failed(event_ids, Status.PENDING, *also)
    if commit:
        db.session.commit()
    return moved


def move_failed(
    event_ids: list[uuid.UUID], to: Status, *also: ColumnElement[bool], **values: object
) -> list[uuid.UUID]:
    """The guarded move out of the DLQ, in the caller's transaction: replay or discard.

    Only events still FAILED move (an event replayed or discarded meanwhile is left alone);
    returns those moved. A replay (to PENDING) gives a fresh retry budget and clears the
    result; `also` are conditions the events must still meet (they were chosen by them);
    `values` are more columns to set with it (an edited payload).
    """
    if not event_ids:
        return []
    if to == Status.PENDING:
        values = dict(
            replayed_attempts=Event.attempts,
            next_attempt_at=utcnow(),
            processed_at=None,
            result=None,
            **values,
        )
    elif to != Status.DISCARDED:
        raise ValueError(f"a FAILED event moves to PENDING or DISCARDED, not {to}")
    moved = db.session.scalars(
        update(Event)
        .where(Event.id.in_(event_ids), Event.status == Status.FAILED.value, *also)
        .values(status=to.value, **values)
        .returning(Event.id),
        execution_options={"synchronize_session": False},
    ).all()
    return list(moved)


def replay_with_payload(
    event_id: uuid.UUID, payload: dict[str, Any], replaced_by: uuid.UUID | None
) -> int | None:
    """Replay a FAILED event with a corrected payload, keeping the old one as a version.

    Returns the number of the version kept (1: the payload as ingested), in the caller's open
    transaction; None (rolled back) if the event is not FAILED. The row lock keeps two
    concurrent edits from both reading the same old payload.
    """
    old = db.session.scalar(
        select(Event.payload)
        .where(Event.id == event_id, Event.status == Status.FAILED.value)
        .with_for_update()
    )
    if old is None:
        db.session.rollback()
        return None
    latest = db.session.scalar(
        select(func.max(PayloadVersion.version)).where(PayloadVersion.event_id == event_id)
    )
    version = (latest or 0) + 1
    db.session.execute(
        insert(PayloadVersion).values(
            event_id=event_id,
            version=version,
            payload=old,
            replaced_by=replaced_by,
            replaced_at=utcnow(),
        )
    )
    if not move_failed([event_id], Status.PENDING, payload=payload):
        db.session.rollback()
        return None
    return version


def replay_failed_in_batches(
    event_type: str | None = None, error_group_id: int | None = None
) -> Iterator[list[uuid.UUID]]:
    """Replay the DLQ as it stands now (of one type, of one error group if given), a batch at a
    time. An event that left the group meanwhile (replayed, failed otherwise) is left alone."""
    conditions: list[ColumnElement[bool]] = []
    if event_type:
        conditions.append(Event.type == event_type)
    if error_group_id is not None:
        conditions.append(Event.error_group_id == error_group_id)
    query = select(Event.id).where(Event.status == Status.FAILED.value, *conditions)
    ids = list(db.session.scalars(query.order_by(Event.created_at)))
    db.session.rollback()
    for start in range(0, len(ids), REPLAY_BATCH):
        moved = replay_events(ids[start : start + REPLAY_BATCH], *conditions)
        if moved:
            yield moved


def release_orphan(
    event_id: uuid.UUID,
    number: int,
    cutoff: datetime,
    max_attempts: int,
    finish: Callable[[AttemptEnd], bool],
) -> str | None:
    """Recover an event whose worker died: close its attempt as lost, then retry or fail it.

    The attempt counts against the budget, so an event that kills its worker every time
    ends in the DLQ instead of looping; it joins the error group of lost workers. `finish` is
    the database's finish_attempt. Returns the new status, or None if it was not orphaned.
    """
    event = db.session.execute(
        select(Event.attempts, Event.replayed_attempts, Event.type).where(
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
    # Due at once: a retry goes back to the queue now (and a failure's due time is unused).
    end = AttemptEnd(event_id, number, event.type, new_status, Outcome.LOST, WORKER_LOST, 0, cutoff)
    return new_status.value if finish(end) else None


def find_orphans(cutoff: datetime, limit: int) -> list[tuple[uuid.UUID, int, int, str, str | None]]:
    """PROCESSING events whose lock has not been refreshed since the cutoff (paused types' wait
    for their resume: releasing one could fail it).

    Rows of (id, attempts, replayed_attempts, type, request_id): the last three for the log.
    """
    rows = db.session.execute(
        select(Event.id, Event.attempts, Event.replayed_attempts, Event.type, Event.request_id)
        .where(Event.status == Status.PROCESSING.value, Event.locked_at < cutoff, not_paused())
        .order_by(Event.locked_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


def count_waiting() -> int:
    """Events that should have a message in the queue (or its schedule): paused types' need none."""
    waiting = db.session.scalar(
        select(func.count()).select_from(Event).where(Event.status.in_(WAITING), not_paused())
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
            .where(Event.status.in_(WAITING), Event.next_attempt_at < cutoff, not_paused())
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


def waiting_of_type(
    event_type: str, batch: int
) -> Iterator[list[tuple[uuid.UUID, datetime | None]]]:
    """The type's PENDING/RETRYING events as (id, next_attempt_at), a batch at a time by id."""
    after: uuid.UUID | None = None
    while True:
        query = select(Event.id, Event.next_attempt_at).where(
            Event.type == event_type, Event.status.in_(WAITING)
        )
        if after is not None:
            query = query.where(Event.id > after)
        rows = [
            (row[0], row[1]) for row in db.session.execute(query.order_by(Event.id).limit(batch))
        ]
        db.session.rollback()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


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
