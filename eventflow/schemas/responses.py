"""What the API answers: one model per response body, built from the use cases' results."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..models import GroupStatus, Role, Status
from .rules import encode_cursor

# Every timestamp goes out in UTC ("…Z"), whatever zone the database connection used.
UtcDatetime = Annotated[datetime, AfterValidator(lambda moment: moment.astimezone(UTC))]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(Out):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="snake_case, stable: for code.")
    message: str = Field(description="What is wrong, for a person to read.")


class ErrorEnvelope(Out):
    """Every error, 4xx or 5xx, on every API path."""

    error: ErrorDetail


# --- accounts ------------------------------------------------------------------------------------


class Account(Out):
    id: uuid.UUID
    email: str
    role: Role


class AccessToken(Out):
    access_token: str = Field(description="A JWT (HS256) for `Authorization: Bearer …`.")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the access token expires.")


class Tokens(AccessToken):
    refresh_token: str = Field(description="POST /auth/refresh with it as the Bearer token.")


# --- events --------------------------------------------------------------------------------------


class Queued(Out):
    eventId: uuid.UUID  # noqa: N815 - the contract's name
    status: Literal["queued"]


class BatchItem(Out):
    eventId: uuid.UUID  # noqa: N815 - the contract's name
    status: Literal["queued", "duplicate"] = Field(
        description="duplicate: the idempotency_key was used before; eventId is the original's."
    )


class BatchAccepted(Out):
    items: list[BatchItem] = Field(description="One per event, in request order.")
    accepted: int
    duplicates: int


class EventView(Out):
    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    status: Status
    result: Any = Field(description="The handler's return value (any JSON), or null.")
    attempts: int
    last_error: str | None
    created_at: UtcDatetime
    processed_at: UtcDatetime | None


class NumberedPage(Out):
    """A page by number, with the total (page × limit at most 10,000)."""

    items: list[EventView]
    page: int
    limit: int
    total: int = Field(description="Exact, or 10,000 when `total_capped` (there are more).")
    total_capped: bool = Field(
        description="True: more than 10,000 events match (a filter the per-status counts "
        "cannot answer is counted no further); `total` and `pages` stop there."
    )
    pages: int
    next_cursor: str | None = Field(description="Continue by cursor from here; null: no more.")


class CursorPage(Out):
    """A page after a cursor: nothing counted."""

    items: list[EventView]
    limit: int
    next_cursor: str | None = Field(description="Pass it back as ?cursor=; null: no more.")


EventPage = NumberedPage | CursorPage


def event_page(page: Any) -> NumberedPage | CursorPage:
    """The response for an events.Page: numbered (with the total) or after a cursor."""
    items = [EventView.model_validate(event) for event in page.items]
    next_cursor = encode_cursor(page.last) if page.last is not None else None
    if page.page is None:
        return CursorPage(items=items, limit=page.limit, next_cursor=next_cursor)
    return NumberedPage(
        items=items,
        page=page.page,
        limit=page.limit,
        total=page.total,
        total_capped=page.capped,
        pages=page.pages,
        next_cursor=next_cursor,
    )


class AuditEntryView(Out):
    id: int
    at: UtcDatetime
    actor: str = Field(description="The actor's e-mail as it was, or `command line`.")
    actor_id: uuid.UUID | None = Field(description="null for the command line or a deleted user.")
    action: str
    target: str | None = Field(description="An event, group, bulk action, type or user.")
    filter: dict[str, Any] | None = Field(description="The filter an action applied to.")
    count: int | None = Field(description="How many events the action touched.")
    note: str | None


class AuditPage(Out):
    """Newest first."""

    items: list[AuditEntryView]
    page: int
    limit: int
    total: int
    pages: int


class Replayed(Out):
    replayed: int = Field(description="How many FAILED events went back to the queue.")


# --- error groups --------------------------------------------------------------------------------


class ErrorGroupSummary(Out):
    id: int
    exception: str = Field(description="The class, qualified by its module unless built-in.")
    message: str = Field(description="Normalised: numbers <n>, ids <uuid>, <hex>, quoted <str>.")
    count: int = Field(description="Failed attempts in the group, ever.")
    failed_events: int = Field(
        description="Events in the DLQ now whose latest failure is in the group (counted up "
        "to 10,001: more reads as 10,000+)."
    )
    types: list[str] = Field(description="Event types that failed so, most failures first.")
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    status: GroupStatus


class ErrorGroupDetail(ErrorGroupSummary):
    frame: str = Field(description='The innermost frame in handler code, "module:function".')
    sample_error: str | None
    sample_traceback: str | None
    last_24h: list[int] = Field(description="Failures per hour over the last 24 h, oldest first.")


class ErrorGroupPage(Out):
    items: list[ErrorGroupSummary]
    page: int
    limit: int
    total: int
    pages: int


def error_group_detail(view: Any) -> ErrorGroupDetail:
    """The response for an error_groups.GroupView."""
    group = view.group
    return ErrorGroupDetail(
        id=group.id,
        exception=group.exception,
        message=group.message,
        count=group.count,
        failed_events=view.failed_events,
        types=view.types,
        first_seen=group.first_seen,
        last_seen=group.last_seen,
        status=group.status,
        frame=group.frame,
        sample_error=group.sample_error,
        sample_traceback=group.sample_traceback,
        last_24h=view.hourly,
    )


def error_group_page(page: Any) -> ErrorGroupPage:
    """The response for an error_groups.GroupPage."""
    items = [
        ErrorGroupSummary.model_validate(error_group_detail(view), from_attributes=True)
        for view in page.items
    ]
    return ErrorGroupPage(
        items=items, page=page.page, limit=page.limit, total=page.total, pages=page.pages
    )


# --- operations ----------------------------------------------------------------------------------


class HealthChecks(Out):
    database: str = Field(description='"ok", or "error: <exception class>"')
    queue: str = Field(description='"ok", or "error: <exception class>"')


class HealthReport(Out):
    status: Literal["ok", "degraded"]
    checks: HealthChecks


class PayloadVersionView(Out):
    version: int = Field(description="1: the payload as ingested; each edit keeps one more.")
    payload: dict[str, Any]
    replaced_by: uuid.UUID | None = Field(description="The admin whose edit replaced it.")
    replaced_at: UtcDatetime


class EventDetail(EventView):
    payload_versions: list[PayloadVersionView] = Field(
        description="Earlier payloads, oldest first, that edit-and-replay replaced."
    )


# --- bulk actions --------------------------------------------------------------------------------


class BulkMatched(Out):
    matched: int = Field(description="FAILED events the filter matches now (a dry run).")


class BulkActionStarted(Out):
    id: uuid.UUID
    matched: int = Field(description="The events the action will go through, fixed now.")
    status: Literal["running", "completed"] = Field(description="completed: nothing matched.")


class BulkActionView(Out):
    id: uuid.UUID
    action: Literal["replay", "discard"]
    filter: dict[str, Any]
    note: str | None
    matched: int
    done: int = Field(description="Of `matched`, how many the workers have gone through.")
    status: Literal["running", "completed", "cancelled", "failed"]
    created_by: uuid.UUID | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class BulkActionList(Out):
    items: list[BulkActionView]
    page: int
    limit: int
    total: int
    pages: int


# --- event types ---------------------------------------------------------------------------------


class TypePolicy(Out):
    """The type's retry policy: its handler's @handler(...) values over the global settings."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float


class TypeCounts(Out):
    """The type's events by status, from the counters kept as events move."""

    pending: int
    processing: int
    retrying: int
    failed: int
    processed: int


class TypeState(Out):
    type: str
    paused: bool = Field(description="Its events are accepted and wait; no worker takes them.")
    paused_by: str | None = Field(description="Who paused it: an e-mail, or `command line`.")
    paused_at: UtcDatetime | None
    policy: TypePolicy
    counts: TypeCounts


# --- alerts --------------------------------------------------------------------------------------


class NewErrorGroup(Out):
    id: int
    exception: str
    first_seen: UtcDatetime


class AlertRuleView(Out):
    alert: Literal["dlq_size", "oldest_pending_seconds", "no_workers", "new_error_group"]
    state: Literal["firing", "ok"]
    value: int | float | list[NewErrorGroup] | None = Field(
        description="As last measured: the DLQ size, seconds waited or silent (null: no worker "
        "is running), or for new_error_group the groups first seen since the evaluation before; "
        "null until first evaluated."
    )
    threshold: float | None = Field(description="null for new_error_group.")
    since: UtcDatetime | None = Field(description="When it started firing; null when ok.")


class AlertList(Out):
    alerts: list[AlertRuleView] = Field(description="Every rule, firing or not, in a fixed order.")


class HistoryPointView(Out):
    t: UtcDatetime = Field(description="The start of the step.")
    ingested: int
    processed: int
    failed: int
    retried: int
    p50_ms: float | None = Field(description="Estimated from a histogram; null: none processed.")
    p95_ms: float | None
    p99_ms: float | None


class MetricsHistoryView(Out):
    """Oldest first; a step with nothing counted is a point of zeros."""

    range: str
    step_seconds: int
    points: list[HistoryPointView]
