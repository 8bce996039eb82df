"""The API's field rules, each written once: event types, ids, idempotency keys, paging, cursors,
search filters.

A rule is a type (`Annotated[...]`) whose constraints pydantic both checks and writes into the
JSON Schema, with an `Invalid` marker that gives any failure of the field the error code and
reason the API has always answered with (see parsing.py for how they become the envelope).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    Strict,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from ..filters import PayloadMatch, Scalar, id_range
from ..models import Status
from ..users import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH


@dataclass(frozen=True)
class Invalid:
    """Annotated metadata: any failure of the field is this error code, status and reason.

    The reason follows the field's name ("type must be …"); with `whole=True` it is the whole
    message, in which "{value}" stands for the rejected value. Only a failure reads the marker
    (parsing.py finds it from the error's location), so a valid request pays nothing for it.
    """

    code: str
    reason: str
    status: int = 400
    whole: bool = False

    def error(self, value: Any = None, **details: str) -> PydanticCustomError:
        """The error for a validator to raise; `details` fill the reason's placeholders."""
        # The rejected value goes last: pydantic fills the placeholders in order, so the text
        # a client sent is never searched for more of them.
        context = {"status": self.status, "whole": self.whole, **details, "value": repr(value)}
        return PydanticCustomError(self.code, self.reason, context)

    def message(self, value: Any) -> str:
        """The reason, with the rejected value in place of "{value}"."""
        return self.reason.replace("{value}", repr(value))


# --- events --------------------------------------------------------------------------------------

TYPE_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ . -"
# Anchored for JSON Schema (ECMA `$` is the end of the text); Python callers use fullmatch,
# since Python's `$` would also let a trailing newline through.
TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
EventType = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=TYPE_PATTERN.pattern, examples=["ORDER_CREATED"]),
    Invalid("invalid_type", TYPE_RULE),
]

Payload = Annotated[
    dict[str, Any],
    Field(
        description="Any JSON object. Its strings (keys included) may not hold U+0000 or an "
        "unpaired surrogate, which PostgreSQL cannot store.",
        examples=[{"items": [{"price": 19.99, "qty": 2}]}],
    ),
    Invalid("invalid_payload", "is required and must be a JSON object"),
]

MAX_IDEMPOTENCY_KEY = 255
KEY_RULE = f"must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"


def _printable(key: str) -> str:
    if not key.isprintable():
        raise ValueError("not printable")
    return key


IdempotencyKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="A repeat by the same user returns the first event's id and creates nothing.",
    ),
    AfterValidator(_printable),
    Invalid("invalid_idempotency_key", KEY_RULE),
]

EventId = Annotated[
    uuid.UUID,
    Invalid("event_not_found", "no event with id {value}", status=404, whole=True),
]


def parse_uuid(raw: str | None) -> uuid.UUID | None:
    """An id typed by a person (a filter, a CLI argument): the UUID, or None if it is not one."""
    try:
        return uuid.UUID(raw.strip()) if raw else None
    except ValueError:
        return None


StatusFilter = Annotated[
    Status,
    BeforeValidator(lambda raw: raw.upper() if isinstance(raw, str) else raw),
    Field(description="Case-insensitive."),
    Invalid("invalid_status", f"must be one of {', '.join(Status.__members__)}"),
]


# --- accounts ------------------------------------------------------------------------------------

Email = Annotated[
    str,
    Field(min_length=1, max_length=320, json_schema_extra={"format": "email"}),
    Invalid("invalid_email", "is required and must be an e-mail address"),
]
NewPassword = Annotated[
    str,
    Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH),
    Invalid(
        "invalid_password",
        f"must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters",
    ),
]
# Login checks nothing about the credentials but their type: every mismatch is the same 401.
LoginText = Annotated[str, Invalid("invalid_request", "is required and must be a string")]


# --- paging --------------------------------------------------------------------------------------

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _whole_number(raw: Any) -> Any:
    # ASCII digits only: isdigit() alone admits digits int() refuses ("²"), and int() refuses
    # numbers of more than 4,300 digits; either would be a 500 instead of a 400.
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise ValueError("not a whole number")
        return int(raw)
    return raw


Limit = Annotated[
    int,
    Field(ge=1, le=MAX_LIMIT, description="Items per page."),
    BeforeValidator(_whole_number),
    Invalid("invalid_limit", f"must be a whole number >= 1 and at most {MAX_LIMIT}"),
]
PageNumber = Annotated[
    int,
    Field(ge=1, description="A numbered page (page × limit at most 10,000; then use cursor)."),
    BeforeValidator(_whole_number),
    Invalid("invalid_page", "must be a whole number >= 1"),
]

# A cursor is the position of a page's last item, (created_at, id), base64url-encoded so that
# clients treat it as opaque. It carries no filter and no user: every request applies its own,
# so a hand-made cursor can only move within what the caller may already list.
Position = tuple[datetime, uuid.UUID]
MAX_CURSOR_LENGTH = 200


def encode_cursor(position: Position) -> str:
    moment, event_id = position
    raw = f"{moment.astimezone(UTC).isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any) -> Position | None:
    """The position a cursor of ours names; None for the empty cursor (from the newest)."""
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
        raise ValueError("not a cursor")
    if cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment_text, id_text = base64.urlsafe_b64decode(padded).decode().split("|")
        moment, event_id = datetime.fromisoformat(moment_text), uuid.UUID(id_text)
    except (ValueError, OverflowError):
        raise ValueError("not a cursor") from None
    # Only the exact text we issue: this refuses naive or non-UTC times, other spellings of
    # the id, and the stray characters the lenient base64 decoder skips.
    if moment.tzinfo is None or encode_cursor((moment, event_id)) != cursor:
        raise ValueError("not a cursor")
    return moment, event_id


Cursor = Annotated[
    Position | None,
    PlainValidator(decode_cursor),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_CURSOR_LENGTH,
            "description": "next_cursor of the previous page, unchanged; empty: start a walk "
            "at the newest event (keyset paging, no total).",
        }
    ),
    Invalid(
        "invalid_cursor",
        "is not one this API issued: pass next_cursor from the previous page unchanged",
    ),
]


# --- search filters ------------------------------------------------------------------------------


def parse_moment(raw: Any) -> datetime:
    """An ISO 8601 time with its zone, or a date (midnight UTC), as an aware UTC datetime."""
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str) and raw.isascii():
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            moment = datetime.fromisoformat(raw)  # its ValueError is the field's 400
        else:
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    else:
        raise ValueError("not a time")
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 lies before the first representable time
        raise ValueError("out of range") from None


MOMENT_RULE = (
    "must be an ISO 8601 time with a zone (2026-01-31T12:00:00Z, 2026-01-31T13:00+01:00; "
    "in a URL write + as %2B) or a date (2026-01-31, midnight UTC)"
)


def _moment_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "description": f"{description}: an ISO 8601 time with its zone, or a date "
            "(midnight UTC).",
            "examples": ["2026-01-31T12:00:00Z", "2026-01-31"],
        }
    )


CreatedAfter = Annotated[
    datetime,
    PlainValidator(parse_moment),
    _moment_schema("Events created at or after this time (inclusive)"),
    Invalid("invalid_created_after", MOMENT_RULE),
]
CreatedBefore = Annotated[
    datetime,
    PlainValidator(parse_moment),
    _moment_schema("Events created before this time (exclusive)"),
    Invalid("invalid_created_before", MOMENT_RULE),
]

# error_group_id is a 4-byte integer column: a larger number names no group (and must not
# reach PostgreSQL, which would refuse the comparison).
MAX_GROUP_ID = 2**31 - 1
_GROUP_ID = Field(
    ge=1, le=MAX_GROUP_ID, description="The id of an error group (GET /error-groups)."
)
_GROUP_INVALID = Invalid("invalid_error_group", "must be an error group's id (a whole number >= 1)")
ErrorGroupId = Annotated[int, _GROUP_ID, BeforeValidator(_whole_number), _GROUP_INVALID]
# In a JSON body a number, not its text.
ErrorGroupIdJson = Annotated[int, Strict(), _GROUP_ID, _GROUP_INVALID]


def _id_range(raw: Any) -> tuple[uuid.UUID, uuid.UUID]:
    found = id_range(raw) if isinstance(raw, str) else None
    if found is None:
        raise ValueError("not an id or an id prefix")
    return found


MIN_ID_PREFIX = 8
IdSearch = Annotated[
    tuple[uuid.UUID, uuid.UUID],
    PlainValidator(_id_range),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": MIN_ID_PREFIX,
            "maxLength": 36,
            "pattern": "^[0-9A-Fa-f-]+$",
            "description": "An event id, or its first 8 or more hex digits (dashes optional).",
            "examples": ["0b5e3c1a", "0b5e3c1a-4f0e-4d8e-9a51-2f3c7d9e1b20"],
        }
    ),
    Invalid(
        "invalid_q", f"must be an event id or at least {MIN_ID_PREFIX} of its first hex digits"
    ),
]

# payload.<dotted.path>=<value>: the field at that path of the payload equals the value.
MAX_PAYLOAD_FILTERS = 10
MAX_PAYLOAD_DEPTH = 8
PAYLOAD_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
PAYLOAD_FILTER_RULE = (
    f"must be at most {MAX_PAYLOAD_FILTERS} filters of a dotted path of 1-{MAX_PAYLOAD_DEPTH} "
    "keys (each 1-64 characters of A-Z a-z 0-9 _ -) to a JSON scalar"
)
TOO_MANY_PAYLOAD_FILTERS = Invalid(
    "invalid_payload_filter",
    f"at most {MAX_PAYLOAD_FILTERS} payload filters at once, not {{count}}",
    whole=True,
)
BAD_PAYLOAD_PATH = Invalid(
    "invalid_payload_filter",
    f"the payload filter path {{value}} is not 1-{MAX_PAYLOAD_DEPTH} keys of 1-64 characters "
    "of A-Z a-z 0-9 _ - joined by dots (payload.customer.id=42)",
    whole=True,
)
BAD_PAYLOAD_VALUE = Invalid(
    "invalid_payload_filter",
    "the payload filter at {value} must compare with a JSON scalar (a string, a number, true, "
    "false or null; a string without U+0000 or unpaired surrogates)",
    whole=True,
)


def payload_path(text: str) -> tuple[str, ...]:
    """A dotted path as its keys, customer.id -> ("customer", "id"); a bad one is a 400."""
    keys = tuple(text.split("."))
    if len(keys) > MAX_PAYLOAD_DEPTH or not all(PAYLOAD_KEY.fullmatch(key) for key in keys):
        raise BAD_PAYLOAD_PATH.error(text)
    return keys


def query_scalar(raw: str) -> Scalar:
    """A query string's value as a JSON scalar: 42, 4.2, true, false, null, "42"; else the text.

    Exactly the scalar: " 42" with a space is the text " 42", not the number.
    """
    if raw != raw.strip():
        return raw
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return raw
    if isinstance(value, float) and not math.isfinite(value):
        return raw  # 1e999: beyond a double, so no payload holds it as a number
    return value if isinstance(value, Scalar) else raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: Any) -> bool:
    """A JSON scalar a payload can hold (PostgreSQL's jsonb refuses U+0000, lone surrogates)."""
    if not isinstance(value, Scalar):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    return True


def _payload_matches(raw: Any, *, from_query: bool) -> tuple[PayloadMatch, ...]:
    if not isinstance(raw, dict):
        raise ValueError("not a mapping")
    if len(raw) > MAX_PAYLOAD_FILTERS:
        raise TOO_MANY_PAYLOAD_FILTERS.error(count=str(len(raw)))
    matches = []
    for path, value in raw.items():
        keys = payload_path(path)
        if from_query:
            value = query_scalar(value)
        if not _storable(value):
            raise BAD_PAYLOAD_VALUE.error(path)
        matches.append((keys, value))
    return tuple(matches)


PAYLOAD_INVALID = Invalid("invalid_payload_filter", PAYLOAD_FILTER_RULE)
# In a query string: the `payload.<path>` arguments, gathered by the query model into one
# mapping of path -> raw text (eventflow/schemas/requests.py); documented in the operation's
# description, as OpenAPI has no parameter for a family of names.
PayloadQuery = Annotated[
    tuple[PayloadMatch, ...],
    PlainValidator(functools.partial(_payload_matches, from_query=True)),
    SkipJsonSchema(),
    PAYLOAD_INVALID,
]
# In a JSON body (bulk actions): {"customer.id": 42, "vip": true} with the values as JSON.
PayloadBody = Annotated[
    tuple[PayloadMatch, ...],
    PlainValidator(functools.partial(_payload_matches, from_query=False)),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_PAYLOAD_FILTERS,
            "propertyNames": {
                "pattern": r"^[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){0,7}$",
            },
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            "description": "Dotted path -> JSON scalar: the payload's field equals it (AND).",
            "examples": [{"customer.id": 42}],
        }
    ),
    PAYLOAD_INVALID,
]
