"""Use cases for events: ingest, read, list and replay. Shared by the API, dashboard and CLI."""

from __future__ import annotations

import base64
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, tuple_

from . import transitions
from .errors import ApiError
from .extensions import db
from .models import Event, EventAttempt, Status, User
from .tasks.queue import get_queue

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
