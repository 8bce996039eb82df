"""Which events a listing or a bulk action means: one filter, turned into SQL in one place.

The Events page, `GET /events`, the DLQ and bulk actions all select events with an EventFilter,
so a bulk action touches exactly what the same filter lists. Values arrive parsed (the edges
validate them against eventflow/schemas/); this module only says what they mean in SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, select

from .backend import current_backend
from .extensions import db
from .models import Event, Status, User

if TYPE_CHECKING:
    from .events import Viewer

# A payload filter's value: what `payload.<path>=<value>` compares the field with.
Scalar = str | int | float | bool | None
PayloadMatch = tuple[tuple[str, ...], Scalar]  # (path as its keys, value)


@dataclass(frozen=True)
class EventFilter:
    """Every field is optional and they AND together; the empty filter means every event."""

    status: Status | None = None
    type: str | None = None
    user: str | None = None  # an id or an e-mail address (for those who see every event)
    error_group: int | None = None  # the group of the event's latest failure
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    id_range: tuple[uuid.UUID, uuid.UUID] | None = None  # an id, or all ids with a prefix
    payload: tuple[PayloadMatch, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The filter as JSON (bulk actions and the audit log keep it), only the fields set."""
        out: dict[str, Any] = {}
        if self.status:
            out["status"] = self.status.value
        for name in ("type", "user", "error_group"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        if self.id_range is not None:
            out["id_range"] = [str(bound) for bound in self.id_range]
        if self.payload:
            out["payload"] = {".".join(path): value for path, value in self.payload}
        return out


def id_range(prefix_or_id: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids an id or an id prefix (8 to 32 hex digits, dashes ignored) covers; None if neither.

    A range of the primary key: uuid order is the order of its hex digits, so a prefix is one
    index range scan however many events there are.
    """
    digits = prefix_or_id.strip().lower().replace("-", "")
    if not 8 <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def conditions(f: EventFilter, viewer: Viewer) -> list[ColumnElement[bool]]:
    """The WHERE clause of the filter as the viewer may apply it (users: their own events)."""
    where: list[ColumnElement[bool]] = []
    if not viewer.sees_all:
        where.append(Event.user_id == viewer.user_id)
    elif f.user:
        where.append(Event.user_id == _user_id(f.user))
    if f.status:
        where.append(Event.status == f.status.value)
    if f.type:
        where.append(Event.type == f.type)
    if f.error_group is not None:
        where.append(Event.error_group_id == f.error_group)
    if f.created_after is not None:
        where.append(Event.created_at >= f.created_after)
    if f.created_before is not None:
        where.append(Event.created_at < f.created_before)
    if f.id_range is not None:
        low, high = f.id_range
        where.append(Event.id == low if low == high else and_(Event.id >= low, Event.id <= high))
    database = current_backend().database
    where.extend(database.payload_equals(path, value) for path, value in f.payload)
    return where


def _user_id(user: str) -> uuid.UUID:
    """A user filter may be an id or an e-mail address (case-insensitive); the nil id if no
    user has that address.

    Looked up first rather than left as a subquery: with the id in the statement the planner
    knows how many events the user has and walks ix_events_user_id_status_created_at; with a
    subquery it joined users to every event of the status instead (BENCHMARKS.md).
    """
    try:
        return uuid.UUID(user.strip())
    except ValueError:
        found = db.session.scalar(
            select(User.id).where(func.lower(User.email) == user.strip().lower())
        )
        return found or uuid.UUID(int=0)
