"""Use cases for events: read, list and replay. Shared by the API, dashboard and CLI.

They take parsed values (ids as UUIDs, numbers as ints, a cursor as a position): reading the
request and its 400s happen at the edge, against the schemas in eventflow/schemas/.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, tuple_

from . import audit, counts, filters, pages
from .errors import ApiError
from .extensions import db
from .filters import EventFilter
from .models import STAFF_ROLES, Event, EventAttempt, PayloadVersion, Role, Status, User
from .schemas.rules import (
    DEFAULT_LIMIT,
    Position,
)
from .tasks import transitions
from .tasks.queue import get_queue

MAX_DLQ_TYPES = 200
EVERY_EVENT = EventFilter()
# Numbered pages reach this many rows deep (page * limit): deeper OFFSETs make the database
# read and discard every row before the page. Past it, clients page by cursor.
MAX_PAGE_DEPTH = pages.MAX_PAGE_DEPTH


@dataclass(frozen=True)
class Viewer:
    """Who is asking: the authenticated user's id and their role (as the database has it now)."""

    user_id: uuid.UUID
    role: str

    @property
    def is_admin(self) -> bool:
        """May act: replay, edit, bulk actions, pause, status changes."""
        return self.role == Role.ADMIN.value

    @property
    def sees_all(self) -> bool:
        """Sees every user's events and the admin pages (admins and viewers)."""
        return self.role in STAFF_ROLES


@dataclass(frozen=True)
class Page:
    """A page of a listing: by number (with the total) or after a cursor (page and total None).

    `last` is the position of its last item when more items follow (where the next page
    starts), else None. A `capped` total means more than counts.CAP ("10,000+").
    """

    items: list[Event]
    limit: int
    last: Position | None = None
    page: int | None = None
    total: int | None = None
    capped: bool = False

    @property
    def pages(self) -> int | None:
        if self.total is None:
            return None
        return math.ceil(self.total / self.limit) if self.total else 0

    @property
    def deepest_page(self) -> int:
        """The last page a numbered listing may ask for (deeper ones need a cursor)."""
        return max(1, MAX_PAGE_DEPTH // self.limit)


def get_event(viewer: Viewer, event_id: uuid.UUID) -> Event:
    """The event if the viewer may see it; otherwise the same 404 as for an unknown id."""
    event = db.session.get(Event, event_id)
    if event is None or (not viewer.sees_all and event.user_id != viewer.user_id):
        raise ApiError(404, "event_not_found", f"no event with id {str(event_id)!r}")
    return event


def list_attempts(event_id: uuid.UUID) -> list[EventAttempt]:
    return list(
        db.session.scalars(
            select(EventAttempt)
            .where(EventAttempt.event_id == event_id)
            .order_by(EventAttempt.number)
        )
    )


def list_events(
    viewer: Viewer,
    where: EventFilter = EVERY_EVENT,
    *,
    limit: int = DEFAULT_LIMIT,
    page: int | None = 1,
    after: Position | None = None,
) -> Page:
    """Newest first; own events, or every event for admins and viewers (eventflow/filters.py).

    By page number (with the total) at most MAX_PAGE_DEPTH rows deep (400 page_too_deep
    beyond), or, with `page=None`, after a cursor's position at any depth and without
    counting (`after=None`: from the newest event).
    """
    if page is not None:
        _check_depth(page, limit)
    conditions = filters.conditions(where, viewer)
    newest_first = (
        select(Event)
        .where(*conditions)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(limit + 1)  # the extra row only tells whether there is a next page
    )
    if page is None:
        if after is not None:
            # Keyset: strictly older than the last item returned. Events ingested meanwhile
            # are newer, so they can neither shift nor repeat what the rest of the walk sees;
            # the row value is an index range on the (…, created_at) indexes.
            newest_first = newest_first.where(tuple_(Event.created_at, Event.id) < after)
        return _page_of(list(db.session.scalars(newest_first)), limit)
    if viewer.sees_all and replace(where, status=None, type=None) == EVERY_EVENT:
        total = counts.count_events(where.status, where.type)  # exact, from the counters
    else:
        total = counts.count_matching(conditions)
    rows = db.session.scalars(newest_first.offset((page - 1) * limit))
    return _page_of(list(rows), limit, page=page, total=total)


def _check_depth(page: int, limit: int) -> None:
    """400 page_too_deep unless the page lies within MAX_PAGE_DEPTH rows."""
    if page * limit > MAX_PAGE_DEPTH:
        raise ApiError(
            400,
            "page_too_deep",
            f"page * limit may be at most {MAX_PAGE_DEPTH:,} (page {page:,} of {limit} is "
            "deeper): use ?cursor= with next_cursor from a previous page to go further",
        )


def _page_of(
    rows: list[Event], limit: int, page: int | None = None, total: counts.Total | None = None
) -> Page:
    """A Page from up to limit + 1 rows, with its last item's position if more follow."""
    items = rows[:limit]
    last = (items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(
        items=items,
        limit=limit,
        last=last,
        page=page,
        total=total.count if total else None,
        capped=total.capped if total else False,
    )


def replay_event(event_id: uuid.UUID, actor: User | None) -> uuid.UUID:
    """Send one FAILED event back to the queue with a fresh retry budget; 409 if not FAILED.

    The replay and its audit entry commit together.
    """
    if db.session.get(Event, event_id) is None:
        raise ApiError(404, "event_not_found", f"no event with id {str(event_id)!r}")
    replayed = transitions.replay_events([event_id], commit=False)
    if not replayed:
        db.session.rollback()
        raise ApiError(409, "not_in_dlq", "only FAILED events can be replayed")
    audit.record(actor, "replay", target=str(event_id), count=1)
    db.session.commit()
    get_queue().enqueue(replayed, replayed=len(replayed))
    return event_id


def edit_and_replay(event_id: uuid.UUID, payload: dict[str, Any], actor: User | None) -> uuid.UUID:
    """Replay a FAILED event with a corrected payload; the one it replaces is kept, audited.

    The edit, the replay and the audit entry commit together; 409 (nothing kept) if not FAILED.
    """
    if db.session.get(Event, event_id) is None:
        raise ApiError(404, "event_not_found", f"no event with id {str(event_id)!r}")
    replaced_by = actor.id if actor is not None else None
    if transitions.replay_with_payload(event_id, payload, replaced_by) is None:
        raise ApiError(409, "not_in_dlq", "only FAILED events can be replayed")
    audit.record(actor, "edit_payload", target=str(event_id), count=1)
    db.session.commit()
    get_queue().enqueue([event_id], replayed=1)
    return event_id


def list_payload_versions(event_id: uuid.UUID) -> list[PayloadVersion]:
    """The payloads edits replaced, oldest first (1: as ingested)."""
    return list(
        db.session.scalars(
            select(PayloadVersion)
            .where(PayloadVersion.event_id == event_id)
            .order_by(PayloadVersion.version)
        )
    )


def replay_dlq(actor: User | None, event_type: str | None = None) -> int:
    """Replay every FAILED event (of one type, if given); return how many were replayed."""
    total = 0
    for batch in transitions.replay_failed_in_batches(event_type):
        get_queue().enqueue(batch, replayed=len(batch))
        total += len(batch)
    audit.record(
        actor, "replay_all", filter={"type": event_type} if event_type else {}, count=total
    )
    db.session.commit()
    return total


def count_dlq_by_type() -> list[tuple[str, int]]:
    """(type, count) of the FAILED events, largest first (the DLQ's replay-by-type picker)."""
    return counts.count_by_type(Status.FAILED.value, MAX_DLQ_TYPES)
