"""The search filters' field rules (GET /events, the Events page, bulk actions' filters):
creation-time bounds, an id or id prefix, an error group, payload paths and their values.

Written like rules.py: each rule is a type whose checks pydantic runs and writes into the JSON
Schema, with the `Invalid` marker that names its 400.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainValidator, Strict, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from ..filters import PayloadMatch, Scalar, id_range
from .rules import Invalid, _whole_number

# --- when ----------------------------------------------------------------------------------------


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

# --- which ---------------------------------------------------------------------------------------

# error_group_id is a 4-byte integer column: a larger number names no group (and must not
# reach PostgreSQL, which would refuse the comparison).
MAX_GROUP_ID = 2**31 - 1
_GROUP_ID = Field(
    ge=1, le=MAX_GROUP_ID, description="The id of an error group (GET /error-groups)."
)
_GROUP_INVALID = Invalid("invalid_error_group", "must be an error group's id (a whole number >= 1)")
# In a query string its ASCII digits, read as rules.py reads page numbers.
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

# --- what the payload holds ----------------------------------------------------------------------

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
