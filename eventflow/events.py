"""Use cases for events: ingest, read, list and replay. Shared by the API, dashboard and CLI."""

from __future__ import annotations

import base64
import functools
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, cast, exists, func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError

from . import transitions
from .errors import ApiError
from .extensions import db, ingest_engine
from .models import Event, EventAttempt, RevokedToken, Status, User, utcnow
from .tasks.queue import get_queue
from .tokens import Credentials, check_session

TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_IDEMPOTENCY_KEY = 255
MAX_LIMIT = 100
MAX_DLQ_TYPES = 200
DEFAULT_LIMIT = 20
# Numbered pages reach this many rows deep (page * limit): deeper OFFSETs make the database
# read and discard every row before the page. Past it, clients page by cursor.
MAX_PAGE_DEPTH = 10_000
MAX_CURSOR_LENGTH = 200


@dataclass(frozen=True)
class Viewer:
    """Who is asking: the authenticated user's id and whether they are an admin."""

    user_id: uuid.UUID
    is_admin: bool


@dataclass(frozen=True)
class Page:
    """A page of a listing: by number (with the total) or after a cursor (page and total None)."""

    items: list[Event]
    limit: int
    next_cursor: str | None = None
    page: int | None = None
    total: int | None = None

    @property
    def pages(self) -> int | None:
        if self.total is None:
            return None
        return math.ceil(self.total / self.limit) if self.total else 0

    @property
    def deepest_page(self) -> int:
        """The last page a numbered listing may ask for (deeper ones need a cursor)."""
        return max(1, MAX_PAGE_DEPTH // self.limit)


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
_USERS = User.__table__
_REVOKED = RevokedToken.__table__
_ROW_COLUMNS = (
    "id",
    "user_id",
    "type",
    "payload",
    "status",
    "attempts",
    "replayed_attempts",
    "idempotency_key",
    "created_at",
    "next_attempt_at",
)
_EVENT_ID_FOR_KEY = select(_EVENTS.c.id).where(
    _EVENTS.c.user_id == bindparam("user_id"),
    _EVENTS.c.idempotency_key == bindparam("idempotency_key"),
)


@functools.cache
def _guarded_insert(dialect: str):
    """INSERT … SELECT <row> WHERE <the session is live> RETURNING id, built once per dialect.

    The session check (user exists, token generation current, session not logged out) rides in
    the insert itself, so ingest honours revocation at no extra round trip. A plain INSERT, not
    the dialects' ON CONFLICT variant: SQLAlchemy cannot cache the compiled form of that one with
    a SELECT, and compiling it on every request cost ~1 ms (BENCHMARKS.md). A repeated
    Idempotency-Key is the unique index's IntegrityError instead; a racing repeat waits for the
    first row's commit either way.
    """

    def value(name: str):
        column = _EVENTS.c[name]
        param = bindparam(name, type_=column.type)
        # PostgreSQL needs the types spelt out in a SELECT list; SQLite must not cast (its
        # CAST AS JSON would turn the text into a number).
        return cast(param, column.type) if dialect == "postgresql" else param

    live_session = exists().where(
        _USERS.c.id == bindparam("session_user_id", type_=_USERS.c.id.type),
        _USERS.c.token_generation == bindparam("session_generation"),
    ) & ~exists().where(_REVOKED.c.jti == bindparam("session_id"))
    statement = insert(_EVENTS).from_select(
        list(_ROW_COLUMNS), select(*(value(name) for name in _ROW_COLUMNS)).where(live_session)
    )
    return statement.returning(_EVENTS.c.id)


def create_event(
    credentials: Credentials,
    event_type: str,
    payload: dict,
    idempotency_key: str | None = None,
) -> tuple[uuid.UUID, bool]:
    """Commit and queue a new event; return (id, created). A repeated key returns the same id."""
    now = utcnow()
    row = dict(
        id=uuid.uuid4(),
        user_id=credentials.user_id,
        type=event_type,
        payload=payload,
        status=Status.PENDING.value,
        attempts=0,
        replayed_attempts=0,
        idempotency_key=idempotency_key,
        created_at=now,
        next_attempt_at=now,
        session_user_id=credentials.user_id,
        session_generation=credentials.generation,
        session_id=credentials.session_id,
    )
    existing = None
    # The hot path: one prebuilt statement on an autocommit connection is one round trip
    # (no BEGIN/COMMIT of its own), and the row is committed when it returns.
    with ingest_engine().connect() as conn:
        try:
            inserted = conn.execute(_guarded_insert(conn.dialect.name), row).first()
        except IntegrityError:
            # The key was used before (perhaps by a request racing this one, whose commit the
            # unique index waited for): that event wins, if the session is still live.
            inserted = None
            if idempotency_key is not None:
                existing = conn.execute(
                    _EVENT_ID_FOR_KEY,
                    {"user_id": credentials.user_id, "idempotency_key": idempotency_key},
                ).scalar()
    if inserted is None:
        check_session(credentials)  # says why (401) when the session is what stopped the insert
        if existing is None:
            raise ApiError(401, "token_revoked", "the token has been revoked; log in again")
        return existing, False
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
    # isdigit() alone admits digits int() refuses ("²"), and int() refuses numbers of more
    # than 4,300 digits: either would be a 500 instead of a 400.
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > 18
        or int(raw) < 1
        or (maximum is not None and int(raw) > maximum)
    ):
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
    cursor: str | None = None,
    limit: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    user: str | None = None,
    event_id: str | None = None,
) -> Page:
    """Newest first; own events, or every event for admins (who may also filter by user).

    By page number (with the total) at most MAX_PAGE_DEPTH rows deep, or after a cursor at
    any depth and without counting; an empty cursor starts a walk at the newest event.
    """
    size = _positive_int(limit, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    if cursor is not None and page:
        raise ApiError(
            400, "page_and_cursor", "use page or cursor, not both: a cursor says where pages go on"
        )
    page_no = _page_number(page, size) if cursor is None else None
    after = _decode_cursor(cursor) if cursor else None
    conditions = _listing_conditions(viewer, status, event_type, user, event_id)
    newest_first = (
        select(Event)
        .where(*conditions)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(size + 1)  # the extra row only tells whether there is a next page
    )
    if page_no is None:
        if after is not None:
            # Keyset: strictly older than the last item returned. Events ingested meanwhile
            # are newer, so they can neither shift nor repeat what the rest of the walk sees;
            # the row value is an index range on the (…, created_at) indexes.
            newest_first = newest_first.where(tuple_(Event.created_at, Event.id) < after)
        return _page_of(list(db.session.scalars(newest_first)), size)
    total = db.session.scalar(select(func.count()).select_from(Event).where(*conditions))
    rows = db.session.scalars(newest_first.offset((page_no - 1) * size))
    return _page_of(list(rows), size, page=page_no, total=total or 0)


def _listing_conditions(
    viewer: Viewer,
    status: str | None,
    event_type: str | None,
    user: str | None,
    event_id: str | None,
) -> list:
    """A listing's filters, the same by page and by cursor; 400 for a bad value."""
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
    return conditions


def _page_number(raw: str | None, size: int) -> int:
    """The page asked for, if it lies within MAX_PAGE_DEPTH rows; else 400 page_too_deep."""
    page_no = _positive_int(raw, "page", 1)
    if page_no * size > MAX_PAGE_DEPTH:
        raise ApiError(
            400,
            "page_too_deep",
            f"page * limit may be at most {MAX_PAGE_DEPTH:,} (page {page_no:,} of {size} is "
            "deeper): use ?cursor= with next_cursor from a previous page to go further",
        )
    return page_no


def _page_of(rows: list[Event], size: int, **numbered: int) -> Page:
    """A Page from up to size + 1 rows, with the cursor after its last item if more follow."""
    items = rows[:size]
    next_cursor = _encode_cursor(items[-1]) if len(rows) > size else None
    return Page(items=items, limit=size, next_cursor=next_cursor, **numbered)


# A cursor is the position of a page's last item, (created_at, id), base64url-encoded so that
# clients treat it as opaque. It carries no filter and no user: every request applies its own,
# so a hand-made cursor can only move within what the caller may already list.
def _encode_cursor(event: Event) -> str:
    return _cursor_text(event.created_at, event.id)


def _cursor_text(moment: datetime, event_id: uuid.UUID) -> str:
    raw = f"{moment.astimezone(UTC).isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) of a cursor this API issued; 400 invalid_cursor for anything else."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError(cursor)
        padded = cursor + "=" * (-len(cursor) % 4)
        moment_text, id_text = base64.urlsafe_b64decode(padded).decode().split("|")
        moment, event_id = datetime.fromisoformat(moment_text), uuid.UUID(id_text)
        # Only the exact text we issue: this refuses naive or non-UTC times, other spellings
        # of the id, and the stray characters the lenient base64 decoder skips.
        if moment.tzinfo is None or _cursor_text(moment, event_id) != cursor:
            raise ValueError(cursor)
    except (ValueError, OverflowError):
        raise ApiError(
            400,
            "invalid_cursor",
            "cursor is not one this API issued: pass next_cursor from the previous page unchanged",
        ) from None
    return moment, event_id


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
