"""The request schemas (eventflow/schemas) on their own: the same answers as the rules they state.

POST /events and POST /events/batch are still checked by ingest.py on its hot path; these tests
pin NewEvent and NewEvents to exactly what ingest.validate_event / validate_batch answer, so
ingest can switch to the schemas without a client noticing.
"""

import uuid
from datetime import UTC, datetime

import pytest

from eventflow import ingest
from eventflow.errors import ApiError
from eventflow.schemas.parsing import parse_event_id, parse_json, parse_query, validate
from eventflow.schemas.requests import EventQuery, IngestHeaders, NewEvent, NewEvents
from eventflow.schemas.rules import decode_cursor, encode_cursor


def _answer(check, *args):
    """(status, code, message) of the ApiError `check(*args)` raises, or None if it accepts."""
    try:
        check(*args)
    except ApiError as exc:
        return exc.status, exc.code, exc.message
    return None


EVENT_BODIES = [
    {"type": "ORDER_CREATED", "payload": {"items": [{"price": 1, "qty": 2}]}},
    {"type": "x" * 64, "payload": {"big": 10**40}},
    {"payload": {}},
    {"type": "", "payload": {}},
    {"type": "x" * 65, "payload": {}},
    {"type": "has space", "payload": {}},
    {"type": "A\n", "payload": {}},
    {"type": "émoji", "payload": {}},
    {"type": 5, "payload": {}},
    {"type": "A"},
    {"type": "A", "payload": []},
    {"type": "A", "payload": None},
    {"type": "A", "payload": {}, "extra": 1},
    {"type": 5, "payload": [], "extra": 1},
    {"type": "A", "payload": {}, "idempotency_key": "k"},
    [1, 2],
    "text",
    None,
]


@pytest.mark.parametrize("body", EVENT_BODIES, ids=repr)
def test_new_event_schema_answers_as_ingest_does(body):
    assert _answer(validate, NewEvent, body, "body") == _answer(ingest.validate_event, body)


def _batch(bad=None, size=20, at=7):
    events = [{"type": "A", "payload": {"n": n}} for n in range(size)]
    if bad is not None:
        events[at] = bad
    return {"events": events}


BATCH_BODIES = [
    _batch(),
    _batch({"type": "A", "payload": {}, "idempotency_key": "order-1"}),
    _batch({"type": "A", "payload": {}, "idempotency_key": None}),
    _batch({"type": "has space", "payload": {}}),
    _batch({"payload": {}}),
    _batch({"type": "A", "payload": [1]}),
    _batch({"type": "A"}),
    _batch({"type": "A", "payload": {}, "idempotency_key": "k" * 256}),
    _batch({"type": "A", "payload": {}, "idempotency_key": ""}),
    _batch({"type": "A", "payload": {}, "idempotency_key": 7}),
    _batch({"type": "A", "payload": {}, "idempotency_key": "line\nbreak"}),
    _batch({"type": "A", "payload": {}, "priority": 1}),
    _batch("ORDER_CREATED"),
    {**_batch({"type": "bad type", "payload": {}}), "dry_run": True},
    {"events": [{"type": "A", "payload": []}, "x", {"type": "?", "payload": {}}]},
    {"events": []},
    {"events": "ORDER_CREATED"},
    {"events": None},
    {},
    [],
    _batch(size=1000),
    _batch(size=1001),
]


@pytest.mark.parametrize("body", BATCH_BODIES, ids=lambda b: repr(b)[:60])
def test_batch_schema_answers_as_ingest_does(body):
    assert _answer(validate, NewEvents, body, "body") == _answer(ingest.validate_batch, body)


def test_strict_json_refuses_nan_infinity_and_out_of_range_numbers_and_keeps_big_integers():
    for raw in [b'{"x": NaN}', b'{"x": -Infinity}', b'{"x": 1e400}', b"{", b"", b"\xff"]:
        assert _answer(parse_json, raw)[:2] == (400, "invalid_json"), raw
    big = parse_json(b'{"n": 123456789012345678901234567890}')
    assert big == {"n": 123456789012345678901234567890}
    assert parse_json(b'{"k": 1, "k": 2}') == {"k": 2}  # as json.loads: the last one wins


def test_query_strings_parse_to_typed_values_with_the_old_codes():
    query = parse_query(EventQuery, {"limit": "5", "status": "failed", "x": "?"})
    assert (query.limit, query.page, query.status, query.type) == (5, 1, "FAILED", None)
    by_cursor = parse_query(EventQuery, {"cursor": ""})
    assert (by_cursor.page, by_cursor.cursor) == (None, None)
    for args, code in [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1_0"}, "invalid_limit"),
        ({"limit": " 5"}, "invalid_limit"),
        ({"page": "9" * 19}, "invalid_page"),
        ({"status": "DONE"}, "invalid_status"),
        ({"type": "a b"}, "invalid_type"),
        ({"type": ""}, "invalid_type"),  # empty is a value, and not a type
        ({"limit": ""}, "invalid_limit"),
        ({"cursor": "nope"}, "invalid_cursor"),
        ({"cursor": "", "page": "x"}, "page_and_cursor"),
        ({"user": "a\x00b"}, "invalid_user"),
    ]:
        assert _answer(parse_query, EventQuery, args)[:2] == (400, code), args
    assert _answer(parse_query, EventQuery, {"limit": "101"}) == (
        400,
        "invalid_limit",
        "limit must be a whole number >= 1 and at most 100",
    )


def test_a_cursor_is_only_what_the_api_issued():
    position = (datetime(2024, 5, 1, 12, 30, 1, 250, tzinfo=UTC), uuid.uuid4())
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position
    for forged in [cursor + "A", cursor[:-1], "x" * 201, "not-base64!"]:
        with pytest.raises(ValueError):
            decode_cursor(forged)


def test_a_malformed_event_id_is_the_404_of_an_unknown_one():
    known = uuid.uuid4()
    assert parse_event_id(str(known)) == known
    assert _answer(parse_event_id, "not-a-uuid") == (
        404,
        "event_not_found",
        "no event with id 'not-a-uuid'",
    )


@pytest.mark.parametrize("key", ["order-1", "k" * 255, "k" * 256, "", "tab\there", None])
def test_idempotency_key_header_schema_answers_as_ingest_does(key):
    headers = {} if key is None else {"Idempotency-Key": key}
    schema_answer = _answer(validate, IngestHeaders, headers, "header")
    assert schema_answer == _answer(ingest.check_idempotency_key, key)
