"""What the API accepts: one model per request body, query string, path and header set."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ..audit import ACTIONS, Action
from ..filters import EventFilter, PayloadMatch
from .rules import (
    DEFAULT_LIMIT,
    Cursor,
    Email,
    EventId,
    EventType,
    GroupId,
    GroupStatusFilter,
    IdempotencyKey,
    Invalid,
    Limit,
    LoginText,
    NewPassword,
    PageNumber,
    Payload,
    StatusFilter,
)
from .search import (
    CreatedAfter,
    CreatedBefore,
    ErrorGroupId,
    ErrorGroupIdJson,
    IdSearch,
    PayloadBody,
    PayloadQuery,
)

NOT_AN_OBJECT = Invalid("invalid_body", "must be a JSON object")


class JsonObject(BaseModel):
    """A JSON object body. Strict: no coercion (a number is not a string). Subclasses that
    say `extra="forbid"` refuse unknown fields; the others ignore them."""

    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _an_object_of_known_fields(cls, data: Any) -> Any:
        # Checked before any field, so the body's shape is the first thing a 400 names.
        if not isinstance(data, dict):
            raise NOT_AN_OBJECT.error(data)
        if cls.model_config.get("extra") == "forbid" and not data.keys() <= _wire_names(cls):
            unknown = sorted(map(str, data.keys() - _wire_names(cls)))
            # The names go into the message through the context, never as its template.
            raise PydanticCustomError(
                "unknown_field",
                "has unknown field(s): {fields}",
                {"status": 400, "whole": False, "fields": ", ".join(unknown)},
            )
        return data


@functools.cache
def _wire_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(field.alias or name for name, field in model.model_fields.items())


# --- accounts ------------------------------------------------------------------------------------


class Registration(JsonObject):
    """A new account: always of role `user` (a `role` field is ignored)."""

    email: Email
    password: NewPassword


class Login(JsonObject):
    email: LoginText
    password: LoginText


class PasswordChange(JsonObject):
    model_config = ConfigDict(extra="forbid")

    current_password: LoginText
    new_password: NewPassword


# --- events --------------------------------------------------------------------------------------


class NewEvent(JsonObject):
    """POST /events. At most 1 MiB (413 beyond)."""

    model_config = ConfigDict(extra="forbid")

    type: EventType
    payload: Payload


class BatchEvent(NewEvent):
    idempotency_key: IdempotencyKey | None = None


MAX_BATCH_EVENTS = 1000
EVENTS_INVALID = Invalid("invalid_events", f"must be a list of 1-{MAX_BATCH_EVENTS:,} events")
TOO_MANY_EVENTS = Invalid(
    "too_many_events",
    f"a batch holds at most {MAX_BATCH_EVENTS:,} events, not {{count}}: split it",
    whole=True,
)


def _batch_size(events: Any) -> Any:
    # The size first: a batch too big is refused before any of its events is looked at.
    if not isinstance(events, list) or not events:
        raise EVENTS_INVALID.error(events)
    if len(events) > MAX_BATCH_EVENTS:
        raise TOO_MANY_EVENTS.error(count=f"{len(events):,}")
    return events


class NewEvents(JsonObject):
    """POST /events/batch: 1-1,000 events, each checked as POST /events checks one; at most
    1 MiB in all (1,000 events of up to ~1 KB fit)."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[
        list[BatchEvent],
        # Field constraints before the validator, or they would not reach the JSON Schema.
        Field(min_length=1, max_length=MAX_BATCH_EVENTS),
        BeforeValidator(_batch_size),
        EVENTS_INVALID,
    ]


class IngestHeaders(BaseModel):
    idempotency_key: IdempotencyKey | None = Field(None, alias="Idempotency-Key")


class DlqReplay(JsonObject):
    """POST /dlq/replay: every FAILED event, or those of one type. The body may be empty."""

    model_config = ConfigDict(extra="forbid")

    type: EventType | None = None


# --- paths and query strings ---------------------------------------------------------------------


class EventPath(BaseModel):
    event_id: EventId


class Query(BaseModel):
    """A query string: unknown arguments are ignored. An empty value is a value (a bad one,
    except the cursor's): the dashboard's forms drop their empty fields before parsing."""

    model_config = ConfigDict(extra="ignore")


class _Paged(Query):
    page: PageNumber | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor = None

    @model_validator(mode="before")
    @classmethod
    def _one_way_of_paging(cls, data: Any) -> Any:
        # Before the values themselves: with a cursor, any page is the mistake to report.
        if isinstance(data, dict) and data.get("cursor") is not None and data.get("page"):
            raise PydanticCustomError(
                "page_and_cursor",
                "use page or cursor, not both: a cursor says where pages go on",
                {"status": 400, "whole": True},
            )
        return data

    @model_validator(mode="after")
    def _numbered_unless_by_cursor(self) -> _Paged:
        if "cursor" not in self.model_fields_set and self.page is None:
            self.page = 1
        return self


UserRef = Annotated[
    str,
    Field(max_length=320, pattern=r"^[^\u0000]*$"),
    Invalid("invalid_user", "must be a user's id or e-mail address"),
]


class EventFilterFields(BaseModel):
    """The fields that select events, for a query string (EventQuery) or a JSON body
    (EventFilterBody); `to_filter()` makes the one EventFilter every listing and bulk action
    uses (eventflow/filters.py)."""

    status: StatusFilter | None = None
    type: EventType | None = None
    user: UserRef | None = Field(None, description="Admins only: the owner's id or e-mail.")
    error_group: ErrorGroupId | None = None
    created_after: CreatedAfter | None = None
    created_before: CreatedBefore | None = None
    q: IdSearch | None = None
    payload: tuple[PayloadMatch, ...] = ()  # parsed by each subclass's own rule

    def to_filter(self) -> EventFilter:
        return EventFilter(
            status=self.status,
            type=self.type,
            user=self.user,
            error_group=self.error_group,
            created_after=self.created_after,
            created_before=self.created_before,
            id_range=self.q,
            payload=self.payload,
        )


PAYLOAD_ARGUMENT = "payload."


class EventQuery(_Paged, EventFilterFields):
    """GET /events: newest first. page=None after validation means cursor paging.

    `payload.<dotted.path>=<value>` arguments (any number up to 10) become `payload`.
    """

    payload: PayloadQuery = ()

    @model_validator(mode="before")
    @classmethod
    def _gather_payload_arguments(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "payload"}
            gathered = {
                key.removeprefix(PAYLOAD_ARGUMENT): value
                for key, value in data.items()
                if isinstance(key, str) and key.startswith(PAYLOAD_ARGUMENT)
            }
            if gathered:
                data["payload"] = gathered
        return data


class EventFilterBody(JsonObject, EventFilterFields):
    """Which events, as a JSON object (bulk actions): the fields of GET /events, with
    `payload` as `{"dotted.path": <JSON scalar>}`."""

    # Lax, unlike other bodies, for the status alone: a strict enum refuses its text. Lax mode
    # still turns no number into a string, and the other fields parse with their own rules.
    model_config = ConfigDict(extra="forbid", strict=False)

    error_group: ErrorGroupIdJson | None = None
    payload: PayloadBody = Field(default_factory=tuple)  # no default in the schema: an object


class DlqQuery(_Paged):
    """GET /dlq: the FAILED events, newest first."""

    type: EventType | None = None


# --- bulk actions and edits ----------------------------------------------------------------------


class BulkActionRequest(JsonObject):
    """POST /bulk-actions."""

    model_config = ConfigDict(extra="forbid")

    action: Annotated[
        Literal["replay", "discard"], Invalid("invalid_action", "must be replay or discard")
    ]
    filter: EventFilterBody | None = Field(None, description="Left out: every FAILED event.")
    dry_run: Annotated[bool, Invalid("invalid_dry_run", "must be true or false")] = False
    note: Annotated[
        str | None, Field(max_length=1000), Invalid("invalid_note", "must be text, at most 1000")
    ] = None


class BulkActionPath(BaseModel):
    action_id: Annotated[
        uuid.UUID,
        Invalid("bulk_action_not_found", "no bulk action with id {value}", status=404, whole=True),
    ]


class BulkActionQuery(Query):
    page: PageNumber = 1
    limit: Limit = DEFAULT_LIMIT


class EditedPayload(JsonObject):
    """POST /events/{id}/replay: an optional corrected payload (the body may be empty)."""

    model_config = ConfigDict(extra="forbid")

    payload: Payload | None = None


AuditAction = Annotated[Action, Invalid("invalid_action", f"must be one of {', '.join(ACTIONS)}")]


class AuditQuery(Query):
    """GET /audit: newest first, by page (the log of actions stays small next to the events)."""

    page: PageNumber = 1
    limit: Limit = DEFAULT_LIMIT
    actor: UserRef | None = Field(None, description="The actor's e-mail (or `command line`).")
    action: AuditAction | None = None


# --- error groups --------------------------------------------------------------------------------


class ErrorGroupQuery(Query):
    """GET /error-groups: by failures in the last 24 h, then the most recently seen."""

    page: PageNumber = 1
    limit: Limit = DEFAULT_LIMIT
    status: GroupStatusFilter | None = None
    type: EventType | None = Field(None, description="Groups with failures of this event type.")


class ErrorGroupPath(BaseModel):
    group_id: GroupId


class GroupStatusChange(JsonObject):
    """PATCH /error-groups/{id}: resolved reopens when the error recurs; ignored stays."""

    model_config = ConfigDict(extra="forbid")

    status: Annotated[
        Literal["open", "resolved", "ignored"],
        Invalid("invalid_status", "must be one of open, resolved, ignored"),
    ]


class TypePath(BaseModel):
    """/types/{event_type}/…: any valid type name, with or without a handler or events."""

    event_type: EventType


# --- metrics history -----------------------------------------------------------------------------

HistoryRangeName = Annotated[
    Literal["1h", "24h", "7d", "30d"],
    Field(description="1h in 60 s steps, 24h in 5 min, 7d in 1 h, 30d in 6 h."),
    Invalid("invalid_range", "must be one of 1h, 24h, 7d, 30d"),
]
HistoryFormat = Annotated[
    Literal["json", "csv"],
    Field(description="csv: text/csv with a header row, one line per point."),
    Invalid("invalid_format", "must be json or csv"),
]


class HistoryQuery(Query):
    """GET /metrics/history: one range of the per-minute rollups, optionally of one type."""

    range: HistoryRangeName = "1h"
    type: EventType | None = Field(None, description="Only this event type (default: all).")
    format: HistoryFormat = "json"
