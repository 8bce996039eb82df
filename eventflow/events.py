"""Use cases for events: ingest, read, list and replay. Shared by the API, dashboard and CLI."""

from __future__ import annotations

import functools
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from . import transitions
from .errors import ApiError
from .extensions import db
from .models import Event, EventAttempt, Status, User, utcnow
from .tasks.queue import get_queue

TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_IDEMPOTENCY_KEY = 255
MAX_LIMIT = 100
MAX_DLQ_TYPES = 200
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class Viewer:
    """Who is asking: the authenticated user's id and whether they are an admin."""

    user_id: uuid.UUID
    is_admin: bool


@dataclass(frozen=True)
class Page:
    items: list[Event]
    page: int
    limit: int
    total: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.limit) if self.total else 0


def _check_no_nul(value: Any, where: str) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb: refuse it up front."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ApiError(400, "invalid_payload", f"{where} contains a NUL (\\u0000) character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_no_nul(key, where)
            _check_no_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_no_nul(item, where)


def validate_event(body: Any) -> tuple[str, dict]:
    """Return (type, payload) from a request body, or a 400 naming the field at fault."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - {"type", "payload"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    event_type = body.get("type")
    if not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type):
        raise ApiError(400, "invalid_type", "type must be 1-64 characters of A-Z a-z 0-9 _ . -")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "payload is required and must be a JSON object")
    _check_no_nul(payload, "payload")
    return event_type, payload


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters"
        )
    return key


_EVENTS = Event.__table__
_INSERT_EVENT = insert(_EVENTS)
_EVENT_ID_FOR_KEY = select(_EVENTS.c.id).where(
    _EVENTS.c.user_id == bindparam("user_id"),
    _EVENTS.c.idempotency_key == bindparam("idempotency_key"),
)


@functools.cache
def _insert_once(dialect: str):
    """INSERT … ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id, built once."""
    builder = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        builder(_EVENTS)
        .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
        .returning(_EVENTS.c.id)
    )


def create_event(
    viewer: Viewer, event_type: str, payload: dict, idempotency_key: str | None = None
) -> tuple[uuid.UUID, bool]:
    """Commit and queue a new event; return (id, created). A repeated key returns the same id."""
    now = utcnow()
    row = dict(
        id=uuid.uuid4(),
        user_id=viewer.user_id,
        type=event_type,
        payload=payload,
        status=Status.PENDING.value,
        attempts=0,
        replayed_attempts=0,
        idempotency_key=idempotency_key,
        created_at=now,
        next_attempt_at=now,
    )
    # The hot path: one prebuilt statement on an autocommit connection is one round trip
    # (no BEGIN/COMMIT of its own), and the row is committed when it returns.
    try:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if idempotency_key is None:
                conn.execute(_INSERT_EVENT, row)
            elif conn.execute(_insert_once(conn.dialect.name), row).first() is None:
                # The key was used before (perhaps by a request racing this one, whose row
                # ON CONFLICT waited for): that event wins.
                existing = conn.execute(
                    _EVENT_ID_FOR_KEY,
                    {"user_id": viewer.user_id, "idempotency_key": idempotency_key},
                ).scalar_one()
                return existing, False
    except IntegrityError:
        raise ApiError(401, "invalid_token", "the token's user no longer exists") from None
    event_id = row["id"]
    # The row is committed: from here on, losing the queue message only delays the event.
    get_queue().enqueue([event_id], ingested=1)
    return event_id, True


def parse_event_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError, AttributeError):
        return None


def get_event(viewer: Viewer, raw_id: str) -> Event:
    """The event if the viewer may see it; otherwise the same 404 as for an unknown id."""
    event_id = parse_event_id(raw_id)
    event = db.session.get(Event, event_id) if event_id else None
    if event is None or (not viewer.is_admin and event.user_id != viewer.user_id):
        raise ApiError(404, "event_not_found", f"no event with id {raw_id!r}")
    return event


def list_attempts(event_id: uuid.UUID) -> list[EventAttempt]:
    return list(
        db.session.scalars(
            select(EventAttempt)
            .where(EventAttempt.event_id == event_id)
            .order_by(EventAttempt.number)
        )
    )


def _positive_int(raw: str | None, name: str, default: int, maximum: int | None = None) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        bound = f" and at most {maximum}" if maximum else ""
        raise ApiError(400, f"invalid_{name}", f"{name} must be a whole number >= 1{bound}")
    return int(raw)


def parse_status(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    status = raw.upper()
    if status not in Status.__members__:
        allowed = ", ".join(Status.__members__)
        raise ApiError(400, "invalid_status", f"status must be one of {allowed}")
    return status


def list_events(
    viewer: Viewer,
    *,
    page: str | None = None,
    limit: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    user: str | None = None,
    event_id: str | None = None,
) -> Page:
    """Newest first; own events, or every event for admins (who may also filter by user)."""
    page_no = _positive_int(page, "page", 1, maximum=10_000_000)
    size = _positive_int(limit, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    conditions = []
    if not viewer.is_admin:
        conditions.append(Event.user_id == viewer.user_id)
    wanted_status = parse_status(status)
    if wanted_status:
        conditions.append(Event.status == wanted_status)
    if event_type:
        if not TYPE_PATTERN.match(event_type):
            raise ApiError(400, "invalid_type", "type must be 1-64 characters of A-Z a-z 0-9 _ . -")
        conditions.append(Event.type == event_type)
    if user and viewer.is_admin:
        conditions.append(Event.user_id.in_(_user_ids_matching(user)))
    if event_id:
        conditions.append(Event.id == parse_event_id(event_id.strip()))
    total = db.session.scalar(select(func.count()).select_from(Event).where(*conditions))
    items = db.session.scalars(
        select(Event)
        .where(*conditions)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(size)
        .offset((page_no - 1) * size)
    )
    return Page(items=list(items), page=page_no, limit=size, total=total or 0)


def _user_ids_matching(user: str):
    """A user filter may be an id or an e-mail address (case-insensitive)."""
    user_id = parse_event_id(user.strip())
    if user_id is not None:
        return select(User.id).where(User.id == user_id)
    return select(User.id).where(func.lower(User.email) == user.strip().lower())


def replay_event(raw_id: str) -> uuid.UUID:
    """Send one FAILED event back to the queue with a fresh retry budget; 409 if not FAILED."""
    event_id = parse_event_id(raw_id)
    if event_id is None or db.session.get(Event, event_id) is None:
        raise ApiError(404, "event_not_found", f"no event with id {raw_id!r}")
    replayed = transitions.replay_events([event_id])
    if not replayed:
        raise ApiError(409, "not_in_dlq", "only FAILED events can be replayed")
    get_queue().enqueue(replayed, replayed=len(replayed))
    return event_id


def replay_dlq(event_type: str | None = None) -> int:
    """Replay every FAILED event (of one type, if given); return how many were replayed."""
    if event_type is not None and (
        not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type)
    ):
        raise ApiError(400, "invalid_type", "type must be 1-64 characters of A-Z a-z 0-9 _ . -")
    total = 0
    for batch in transitions.replay_failed_in_batches(event_type):
        get_queue().enqueue(batch, replayed=len(batch))
        total += len(batch)
    return total


def count_dlq_by_type() -> list[tuple[str, int]]:
    """(type, count) of the FAILED events, largest first (the DLQ's replay-by-type picker)."""
    count = func.count().label("n")
    rows = db.session.execute(
        select(Event.type, count)
        .where(Event.status == Status.FAILED.value)
        .group_by(Event.type)
        .order_by(count.desc(), Event.type)
        .limit(MAX_DLQ_TYPES)
    )
    return [(row.type, row.n) for row in rows]
