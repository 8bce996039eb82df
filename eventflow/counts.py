"""How many events: exact per (type, status) from the counters, capped for any other filter.

The counters (`event_counts`) are kept by triggers on `events` in the transaction of every
change (migration 0010), so reading them costs a few rows however many events there are.
A filter they cannot answer (a user, a time range, a payload field) is counted, but never
past CAP rows: a listing's total then reads "10,000+", as deep as numbered pages go anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select

from .extensions import db
from .models import Event, EventCount

CAP = 10_000


@dataclass(frozen=True)
class Total:
    """A listing's total: exact, or `capped` (there are more than CAP; `count` is CAP)."""

    count: int
    capped: bool = False


def count_by_status(event_type: str | None = None) -> dict[str, int]:
    """Events per status (of one type if given), from the counters; statuses with none left out."""
    query = select(EventCount.status, func.sum(EventCount.count)).group_by(EventCount.status)
    if event_type is not None:
        query = query.where(EventCount.type == event_type)
    return {status: int(n) for status, n in db.session.execute(query) if n}


def count_by_type(status: str, limit: int) -> list[tuple[str, int]]:
    """(type, count) of the events in one status, largest first, from the counters."""
    n = func.sum(EventCount.count).label("n")
    rows = db.session.execute(
        select(EventCount.type, n)
        .where(EventCount.status == status)
        .group_by(EventCount.type)
        .having(n > 0)
        .order_by(n.desc(), EventCount.type)
        .limit(limit)
    )
    return [(row.type, int(row.n)) for row in rows]


def count_events(status: str | None = None, event_type: str | None = None) -> Total:
    """Every event, or those of a status and/or type: exact, from the counters."""
    query = select(func.coalesce(func.sum(EventCount.count), 0))
    if status is not None:
        query = query.where(EventCount.status == status)
    if event_type is not None:
        query = query.where(EventCount.type == event_type)
    return Total(int(db.session.scalar(query) or 0))


def count_matching(conditions: list[ColumnElement[bool]]) -> Total:
    """The events matching any conditions, counted up to CAP + 1 rows (capped past CAP)."""
    matching = select(Event.id).where(*conditions).limit(CAP + 1).subquery()
    n = db.session.scalar(select(func.count()).select_from(matching)) or 0
    return Total(CAP, capped=True) if n > CAP else Total(n)


def count_by_type_and_status() -> dict[str, dict[str, int]]:
    """Events per type, then per status, from the counters; types with no events left out."""
    query = select(EventCount.type, EventCount.status, func.sum(EventCount.count)).group_by(
        EventCount.type, EventCount.status
    )
    counts: dict[str, dict[str, int]] = {}
    for event_type, status, n in db.session.execute(query):
        if n:
            counts.setdefault(event_type, {})[status] = int(n)
    return counts
