"""Use cases for error groups: list, read, change status, replay. Shared by the API and dashboard.

The workers fill the groups (eventflow/tasks/transitions.py, one statement per failed attempt,
by the rule in eventflow/tasks/fingerprints.py): reading them never scans event_attempts. Counts
of events in the DLQ stop at FAILED_CAP, so a page costs the same with a million of them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, func, literal, select, update

from . import audit
from .errors import ApiError
from .events import MAX_PAGE_DEPTH
from .extensions import db
from .models import (
    ErrorGroup,
    ErrorGroupHour,
    ErrorGroupType,
    Event,
    GroupStatus,
    Status,
    User,
    utcnow,
)
from .pages import NumberedPage
from .schemas.rules import DEFAULT_LIMIT
from .tasks import transitions
from .tasks.queue import get_queue

HOURS = 24  # the sparkline's window, and what "recent" means in the order of the list
# "Failed now" counts stop here ("10,000+"): counting a huge group's DLQ on every view would
# cost as much as the group is large.
FAILED_CAP = 10_000


@dataclass(frozen=True)
class GroupView:
    """A group with what its listing shows: its DLQ events, event types and last day."""

    group: ErrorGroup
    failed_events: int  # FAILED now with their latest failure in the group (capped)
    types: list[str]  # most failures first
    hourly: list[int] = field(default_factory=list)  # the last HOURS hours, oldest first

    @property
    def recent(self) -> int:
        return sum(self.hourly)

    @property
    def failed_capped(self) -> bool:
        return self.failed_events > FAILED_CAP


GroupPage = NumberedPage[GroupView]


def list_groups(
    *,
    status: GroupStatus | None = None,
    event_type: str | None = None,
    page: int = 1,
    limit: int = DEFAULT_LIMIT,
) -> GroupPage:
    """Groups by failures in the last HOURS hours, then the most recently seen first."""
    if page * limit > MAX_PAGE_DEPTH:
        raise ApiError(
            400, "page_too_deep", f"page * limit may be at most {MAX_PAGE_DEPTH:,}: narrow the list"
        )
    since = _first_hour(utcnow())
    recent = (
        select(ErrorGroupHour.group_id, func.sum(ErrorGroupHour.count).label("recent"))
        .where(ErrorGroupHour.hour >= since)
        .group_by(ErrorGroupHour.group_id)
        .subquery()
    )
    conditions = _conditions(status, event_type)
    total = db.session.scalar(select(func.count()).select_from(ErrorGroup).where(*conditions))
    groups = db.session.scalars(
        select(ErrorGroup)
        .outerjoin(recent, recent.c.group_id == ErrorGroup.id)
        .where(*conditions)
        .order_by(
            func.coalesce(recent.c.recent, 0).desc(),
            ErrorGroup.last_seen.desc(),
            ErrorGroup.id.desc(),
        )
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return GroupPage(_views(list(groups), since), page, limit, total or 0)


def get_group(group_id: int) -> GroupView:
    """One group, or 404 error_group_not_found."""
    return _views([_group(group_id)], _first_hour(utcnow()))[0]


def set_group_status(actor: User | None, group_id: int, status: GroupStatus) -> GroupView:
    """Resolve, ignore or reopen a group (audited; actor None: the CLI). A resolved group
    reopens when its error recurs; an ignored one stays ignored."""
    group = _group(group_id)
    db.session.execute(
        update(ErrorGroup).where(ErrorGroup.id == group.id).values(status=status.value)
    )
    audit.record(actor, "error_group_status", target=str(group.id), note=status.value)
    db.session.commit()
    return get_group(group.id)


def replay_group(actor: User | None, group_id: int) -> int:
    """Replay exactly the group's DLQ events (audited with their count); how many went."""
    group = _group(group_id)
    total = 0
    for batch in transitions.replay_failed_in_batches(error_group_id=group.id):
        get_queue().enqueue(batch, replayed=len(batch))
        total += len(batch)
    audit.record(actor, "replay_group", target=str(group.id), count=total)
    db.session.commit()
    return total


def _group(group_id: int) -> ErrorGroup:
    group = db.session.get(ErrorGroup, group_id)
    if group is None:
        raise ApiError(404, "error_group_not_found", f"no error group with id {group_id}")
    return group


def _conditions(status: GroupStatus | None, event_type: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(ErrorGroup.status == status.value)
    if event_type:
        of_type = (ErrorGroupType.group_id == ErrorGroup.id) & (ErrorGroupType.type == event_type)
        conditions.append(exists().where(of_type))
    return conditions


def _first_hour(now: datetime) -> datetime:
    """The start of the oldest hour in the window (the current hour is the newest)."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)


def _views(groups: list[ErrorGroup], since: datetime) -> list[GroupView]:
    """The groups with their DLQ counts, types and hourly counts: three queries for the page."""
    ids = [group.id for group in groups]
    if not ids:
        return []
    failed: dict[int, int] = {
        group_id: count
        for group_id, count in db.session.execute(
            select(ErrorGroup.id, _failed_now()).where(ErrorGroup.id.in_(ids))
        )
    }
    types: dict[int, list[str]] = defaultdict(list)
    for group_id, event_type in db.session.execute(
        select(ErrorGroupType.group_id, ErrorGroupType.type)
        .where(ErrorGroupType.group_id.in_(ids))
        .order_by(ErrorGroupType.count.desc(), ErrorGroupType.type)
    ):
        types[group_id].append(event_type)
    hourly: dict[int, list[int]] = {group_id: [0] * HOURS for group_id in ids}
    for group_id, hour, count in db.session.execute(
        select(ErrorGroupHour.group_id, ErrorGroupHour.hour, ErrorGroupHour.count).where(
            ErrorGroupHour.group_id.in_(ids), ErrorGroupHour.hour >= since
        )
    ):
        index = int((hour - since).total_seconds() // 3600)
        if 0 <= index < HOURS:
            hourly[group_id][index] += count
    return [
        GroupView(group, failed.get(group.id, 0), types[group.id], hourly[group.id])
        for group in groups
    ]


def _failed_now() -> ColumnElement[int]:
    """Per group: its events in the DLQ now, counted up to FAILED_CAP + 1 (an index range)."""
    capped = (
        select(literal(1))
        .where(Event.error_group_id == ErrorGroup.id, Event.status == Status.FAILED.value)
        .limit(FAILED_CAP + 1)
        .correlate(ErrorGroup)
        .subquery()
    )
    return select(func.count()).select_from(capped).scalar_subquery()
