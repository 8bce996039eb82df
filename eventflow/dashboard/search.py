"""The Events page's search form and the query arguments of its shareable URL.

The page parses filters as GET /api/v1/events does (EventQuery, eventflow/schemas/): this module
only translates between the form's fields (payload filters as path=value lines, From/To as UTC
datetime-local values) and the API's arguments (payload.<path>=<value>, times with a zone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ApiError
from ..schemas.requests import PAYLOAD_ARGUMENT
from ..schemas.search import parse_moment

FILTERS = ("status", "type", "user", "q", "created_after", "created_before", "error_group")
TIMES = ("created_after", "created_before")
# What the search fields' 400s say on the page, in the page's own words.
MESSAGES = {
    "invalid_q": "Id or prefix: give a full event id or at least its first 8 hex digits, "
    "like 0b5e3c1a.",
    "invalid_created_after": "From: give a date and time in UTC, like 2026-03-01 12:00.",
    "invalid_created_before": "To: give a date and time in UTC, like 2026-03-01 12:00.",
    "invalid_error_group": "The error group is a group's number, like 17.",
}
PAYLOAD_LINES = "Payload filters are path=value lines, like customer.id=42: {line!r} has no =."
# A datetime-local field sends a time without a zone: the dashboard shows and takes UTC.
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")


def read_filters(args: Mapping[str, str]) -> dict[str, str]:
    """The form's values from a request's arguments: `payload` as path=value lines, from the
    URL's payload.<path> arguments and the form's own field."""
    filters = {name: args.get(name, "").strip() for name in FILTERS}
    filters["q"] = filters["q"] or args.get("id", "").strip()  # links of the old id box
    lines = [
        f"{key.removeprefix(PAYLOAD_ARGUMENT)}={value}"
        for key, value in args.items()
        if key.startswith(PAYLOAD_ARGUMENT)
    ]
    lines += args.get("payload", "").splitlines()
    filters["payload"] = "\n".join(line.strip() for line in lines if line.strip())
    return filters


def payload_arguments(lines: str) -> dict[str, str]:
    """Lines of path=value as {"payload.<path>": value}; a line without "=" is a 400."""
    found = {}
    for line in lines.splitlines():
        path, equals, value = line.partition("=")
        if not equals:
            raise ApiError(400, "invalid_payload_filter", PAYLOAD_LINES.format(line=line))
        found[PAYLOAD_ARGUMENT + path.strip()] = value.strip()
    return found


def query_arguments(filters: Mapping[str, str]) -> dict[str, str]:
    """The filters in use as GET /events arguments (a 400 for payload lines without "=")."""
    found = {name: filters.get(name, "") for name in FILTERS}
    for name in TIMES:
        found[name] = as_utc(found[name])
    found.update(payload_arguments(filters.get("payload", "")))
    return {name: value for name, value in found.items() if value}


def as_utc(moment: str) -> str:
    """A datetime-local value read as UTC; any other text as it is."""
    return f"{moment}Z" if LOCAL_TIME.fullmatch(moment) else moment


def field_time(moment: str) -> str:
    """A filter's time as a datetime-local field shows it (UTC), or as typed if it is none."""
    try:
        return parse_moment(as_utc(moment)).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return moment
