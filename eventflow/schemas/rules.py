"""The API's field rules, each written once: event types, ids, idempotency keys, paging, cursors.

A rule is a type (`Annotated[...]`) whose constraints pydantic both checks and writes into the
JSON Schema, with an `Invalid` marker that gives any failure of the field the error code and
reason the API has always answered with (see parsing.py for how they become the envelope).
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..models import GroupStatus, Status
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


# --- error groups --------------------------------------------------------------------------------

GroupStatusFilter = Annotated[
    GroupStatus,
    BeforeValidator(lambda raw: raw.lower() if isinstance(raw, str) else raw),
    Field(description="Case-insensitive."),
    Invalid("invalid_status", f"must be one of {', '.join(s.value for s in GroupStatus)}"),
]
MAX_GROUP_ID = 2**31 - 1
GroupId = Annotated[
    int,
    Field(ge=1, le=MAX_GROUP_ID),
    BeforeValidator(_whole_number),
    Invalid("error_group_not_found", "no error group with id {value}", status=404, whole=True),
]
