"""Search: GET /api/v1/events by payload field, creation time, id prefix and error group.

Every filter returns exactly the matching events, by numbered page and by cursor, to whom may
see them; bad values are 400s naming the field; PostgreSQL answers from indexes; the embedded
SQLite default gives the same answers.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from html import unescape
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from sqlalchemy import text, update

from eventflow import create_app, users
from eventflow.errors import ApiError
from eventflow.extensions import db
from eventflow.models import Event
from tests.conftest import bearer
from tests.pipeline import query_plans
from tests.processes import flask_cli
from tests.test_dashboard_views import htmx, log_in
from tests.test_paging import _error_code, _get, _ids, _walk

# (name, payload) of the events the payload filters look through.
PAYLOADS = [
    ("int", {"customer": {"id": 42}, "vip": True, "tier": "gold"}),
    ("text", {"customer": {"id": "42"}, "vip": False, "tier": "gold"}),
    ("float", {"customer": {"id": 42.0}, "vip": None}),
    ("string-true", {"customer": {"id": 7}, "vip": "true", "tier": "silver"}),
    ("flat", {"customer": 42, "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}),
    ("list", {"customer": [{"id": 42}], "vip": [True]}),
    ("empty", {}),
]
# query string -> the names of the events it must return (newest first: reverse of PAYLOADS)
PAYLOAD_CASES = [
    ("payload.customer.id=42", ["float", "int"]),  # 42.0 is the number 42
    ("payload.customer.id=%2242%22", ["text"]),  # "42" in quotes: the string
    ("payload.customer.id=42.0", ["float", "int"]),
    ("payload.vip=true", ["int"]),
    ("payload.vip=false", ["text"]),
    ("payload.vip=null", ["float"]),  # a field that is null, not a missing one
    ("payload.vip=%22true%22", ["string-true"]),
    ("payload.tier=gold", ["text", "int"]),  # unquoted text is a string
    ("payload.tier=gold&payload.vip=true", ["int"]),  # several filters AND together
    ("payload.tier=gold&payload.customer.id=42", ["int"]),
    ("payload.customer=42", ["flat"]),
    ("payload.deep.a.b.c.d.e.f.g=1", ["flat"]),  # 8 keys deep
    ("payload.customer.id=43", []),
    ("payload.nothing=null", []),
]


def _post(client, headers, payload=None, event_type="SEARCHED") -> str:
    response = client.post(
        "/api/v1/events", json={"type": event_type, "payload": payload or {}}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["eventId"]


def _both_ways(client, query: str, headers) -> list[str]:
    """The ids a query returns by numbered page; asserts a cursor walk returns the same."""
    numbered = _get(client, f"/api/v1/events?limit=100&{query}", headers)
    walked = _walk(client, f"/api/v1/events?limit=2&{query}&cursor=", headers)
    assert _ids(walked) == _ids([numbered]), query
    assert numbered["total"] == len(numbered["items"]), query
    return _ids([numbered])


def _check_payload_cases(client, headers) -> None:
    ids = {name: _post(client, headers, payload) for name, payload in PAYLOADS}
    for query, names in PAYLOAD_CASES:
        assert _both_ways(client, query, headers) == [ids[name] for name in names], query


def test_payload_filters_match_nested_fields_by_json_type(client, auth):
    _check_payload_cases(client, auth)


def test_created_after_is_inclusive_and_created_before_exclusive(app, client, make_user):
    owner = make_user()
    headers = bearer(client, owner.email)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    moments = {
        "day-before": start - timedelta(microseconds=1),
        "start": start,
        "second": start + timedelta(seconds=1),
        "hour": start + timedelta(hours=1),
        "next-day": start + timedelta(days=1),
    }
    with app.app_context():
        rows = {
            name: Event(user_id=owner.id, type="T", payload={}, status="PENDING", created_at=at)
            for name, at in moments.items()
        }
        db.session.add_all(rows.values())
        db.session.commit()
        ids = {name: str(row.id) for name, row in rows.items()}
    for query, names in [
        ("created_after=2026-03-01T00:00:00Z", ["next-day", "hour", "second", "start"]),
        ("created_before=2026-03-01T00:00:00Z", ["day-before"]),
        (
            "created_after=2026-03-01T00:00:00Z&created_before=2026-03-01T01:00:00Z",
            ["second", "start"],
        ),
        # Another zone, the same instants; a date is midnight UTC.
        ("created_after=2026-03-01T01:00:01%2B01:00", ["next-day", "hour", "second"]),
        ("created_after=2026-03-01&created_before=2026-03-02", ["hour", "second", "start"]),
        ("created_before=2026-03-01T00:00:00.000001Z", ["start", "day-before"]),
        ("created_after=2026-03-03", []),
    ]:
        assert _both_ways(client, query, headers) == [ids[name] for name in names], query


def test_an_id_prefix_of_8_or_more_hex_digits_finds_exactly_its_events(client, auth):
    posted = [_post(client, auth) for _ in range(40)]
    wanted = posted[17]
    for prefix in [wanted[:8], wanted[:13], wanted[:13].replace("-", ""), wanted.upper()[:20]]:
        digits = prefix.lower().replace("-", "")
        expected = [i for i in posted[::-1] if i.replace("-", "").startswith(digits)]
        assert wanted in expected
        assert _both_ways(client, f"q={prefix}", auth) == expected, prefix
    for full in [wanted, wanted.replace("-", ""), wanted.upper()]:
        assert _both_ways(client, f"q={full}", auth) == [wanted], full
    for short in [wanted[:7], wanted[:4], "", "-------"]:
        response = client.get(f"/api/v1/events?q={short}", headers=auth)
        assert _error_code(response) == "invalid_q", short
        assert "at least 8" in response.get_json()["error"]["message"]


def test_error_group_filter_returns_the_events_of_that_group(app, client, auth):
    posted = [_post(client, auth) for _ in range(6)]
    with app.app_context():
        for group, ids in [(3, posted[:2]), (4, posted[2:3])]:
            db.session.execute(
                update(Event)
                .where(Event.id.in_([uuid.UUID(i) for i in ids]))
                .values(error_group_id=group, status="FAILED")
            )
        db.session.commit()
    assert _both_ways(client, "error_group=3", auth) == posted[1::-1]
    assert _both_ways(client, "error_group=4&status=FAILED", auth) == [posted[2]]
    assert _both_ways(client, "error_group=5", auth) == []


def test_no_filter_shows_a_user_anothers_events_but_staff_see_everyones(
    app, client, make_user, admin_auth
):
    alice, bob = make_user(), make_user()
    with app.app_context():
        users.set_role(make_user().email, "viewer")
    alice_auth, bob_auth = bearer(client, alice.email), bearer(client, bob.email)
    payload = {"customer": {"id": 42}}
    hers, his = _post(client, alice_auth, payload), _post(client, bob_auth, payload)
    queries = [
        "payload.customer.id=42",
        f"q={hers[:8]}",
        f"q={hers}",
        "created_after=2000-01-01",
        f"user={bob.id}",
        f"user={quote(bob.email)}&payload.customer.id=42",
    ]
    for query in queries:
        assert his not in _both_ways(client, query, alice_auth), query
        assert hers not in _both_ways(client, query, bob_auth), query
    assert _both_ways(client, "payload.customer.id=42", admin_auth) == [his, hers]
    assert _both_ways(client, f"q={hers[:8]}", admin_auth)[-1] == hers
    assert _both_ways(client, f"user={bob.id}&payload.customer.id=42", admin_auth) == [his]


def test_a_viewer_searches_every_users_events(app, client, make_user):
    alice, watcher = make_user(), make_user()
    with app.app_context():
        users.set_role(watcher.email, "viewer")
    hers = _post(client, bearer(client, alice.email), {"order": {"id": "A-1"}})
    viewer_auth = bearer(client, watcher.email)
    assert _both_ways(client, "payload.order.id=A-1", viewer_auth) == [hers]
    assert _both_ways(client, f"q={hers[:9]}", viewer_auth) == [hers]


BAD_QUERIES = [
    ("created_after=yesterday", "invalid_created_after"),
    ("created_after=2026-03-01T00:00:00", "invalid_created_after"),  # no zone
    ("created_after=2026-03-01T00:00:00+01:00", "invalid_created_after"),  # + became a space
    ("created_after=0001-01-01T00:00%2B01:00", "invalid_created_after"),
    ("created_before=2026-13-01", "invalid_created_before"),
    ("created_before=", "invalid_created_before"),
    ("error_group=abc", "invalid_error_group"),
    ("error_group=0", "invalid_error_group"),
    ("error_group=99999999999", "invalid_error_group"),
    ("q=0b5e3c1", "invalid_q"),
    ("q=not-hex-digits", "invalid_q"),
    ("q=" + "a" * 33, "invalid_q"),
    ("payload.=1", "invalid_payload_filter"),
    ("payload.a..b=1", "invalid_payload_filter"),
    ("payload.a%20b=1", "invalid_payload_filter"),
    ("payload.a.b.c.d.e.f.g.h.i=1", "invalid_payload_filter"),  # 9 keys
    ("payload.a=%00", "invalid_payload_filter"),
    ("&".join(f"payload.k{n}=1" for n in range(11)), "invalid_payload_filter"),
]


def test_bad_search_values_are_400_naming_the_field(client, auth):
    _post(client, auth, {"a": 1})
    for query, code in BAD_QUERIES:
        for paging in ("page=1", "cursor="):
            response = client.get(f"/api/v1/events?{query}&{paging}", headers=auth)
            assert _error_code(response) == code, (query, response.get_json())
            assert set(response.get_json()) == {"error"}


def test_odd_but_valid_payload_values_are_strings_not_errors(client, auth):
    odd = {"a": "1e999", "b": "NaN", "c": "[1]", "d": "01", "e": "42 "}
    event_id = _post(client, auth, odd)
    query = "&".join(f"payload.{key}={quote(value)}" for key, value in odd.items())
    assert _both_ways(client, query, auth) == [event_id]
    big = _post(client, auth, {"big": 10**30})
    assert _both_ways(client, f"payload.big={10**30}", auth) == [big]


def test_the_api_document_describes_every_search_filter(client):
    operation = client.get("/api/v1/openapi.json").get_json()["paths"]["/api/v1/events"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {"created_after", "created_before", "error_group", "q"} <= set(parameters)
    assert "inclusive" in parameters["created_after"]["description"]
    assert "exclusive" in parameters["created_before"]["description"]
    assert parameters["q"]["schema"]["minLength"] == 8
    assert "payload" not in parameters  # a family of names: the description documents it
    assert "`payload.<dotted.path>=<value>`" in operation["description"]
    for code in ("invalid_created_after", "invalid_q", "invalid_payload_filter"):
        assert code in operation["responses"]["400"]["description"]


# --- the filter as a JSON body (bulk actions) -------------------------------------------------


def test_a_filter_body_parses_into_the_same_filter_as_the_query_string():
    from eventflow.schemas.parsing import parse_query, validate
    from eventflow.schemas.requests import EventFilterBody, EventQuery

    body = validate(
        EventFilterBody,
        {
            "status": "failed",
            "type": "ORDER_CREATED",
            "error_group": 3,
            "created_after": "2026-03-01",
            "created_before": "2026-03-02T00:00:00+01:00",
            "q": "0b5e3c1a",
            "payload": {"customer.id": 42, "vip": True, "tier": "42", "gone": None},
        },
        "body",
    ).to_filter()
    query = parse_query(
        EventQuery,
        {
            "status": "FAILED",
            "type": "ORDER_CREATED",
            "error_group": "3",
            "created_after": "2026-03-01T00:00:00Z",
            "created_before": "2026-03-01T23:00:00Z",
            "q": "0B5E3C1A",
            "payload.customer.id": "42",
            "payload.vip": "true",
            "payload.tier": '"42"',
            "payload.gone": "null",
        },
    ).to_filter()
    assert body == query
    assert body.as_dict()["payload"] == {"customer.id": 42, "vip": True, "tier": "42", "gone": None}
    for bad, code in [
        ({"error_group": "3"}, "invalid_error_group"),  # in JSON, a number is a number
        ({"error_group": True}, "invalid_error_group"),
        ({"type": 5}, "invalid_type"),
        ({"payload": {"items": [1]}}, "invalid_payload_filter"),
        ({"payload": {"a b": 1}}, "invalid_payload_filter"),
        ({"payload": "customer.id=42"}, "invalid_payload_filter"),
        ({"q": "0b5e3c1"}, "invalid_q"),
        ({"created_before": 1767225600}, "invalid_created_before"),
        ({"id": "0b5e3c1a"}, "unknown_field"),
    ]:
        with pytest.raises(ApiError) as refused:
            validate(EventFilterBody, bad, "body")
        assert (refused.value.status, refused.value.code) == (400, code), bad


# --- indexes ----------------------------------------------------------------------------------

INDEXED_ROWS = 200_000


@pytest.fixture
def big_table(app, make_user):
    """200,000 events over 200,000 seconds: 40 per customer id, 1 in 100 the user's own."""
    crowd, owner = make_user(), make_user()
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO events (id, user_id, type, payload, status, attempts,"
                " replayed_attempts, created_at)"
                " SELECT gen_random_uuid(),"
                "  CASE WHEN g % 100 = 0 THEN CAST(:owner AS uuid) ELSE CAST(:crowd AS uuid) END,"
                "  'ORDER_CREATED',"
                "  jsonb_build_object('customer', jsonb_build_object('id', g % 5000), 'n', g),"
                "  'PROCESSED', 1, 0, TIMESTAMPTZ '2026-03-01 00:00:00+00' - g * interval '1 s'"
                " FROM generate_series(1, :rows) AS g"
            ),
            {"owner": str(owner.id), "crowd": str(crowd.id), "rows": INDEXED_ROWS},
        )
        db.session.commit()
        db.session.execute(text("ANALYZE events"))
        db.session.commit()
        some_id = db.session.scalar(text("SELECT id FROM events ORDER BY random() LIMIT 1"))
    return SimpleNamespace(owner=owner, some_id=str(some_id))


def _collect(answers: list[dict], client, url: str, headers) -> None:
    answers.append(_get(client, url, headers))


def test_payload_prefix_and_time_filters_are_answered_from_indexes(
    app, client, admin_auth, big_table
):
    owner_auth = bearer(client, big_table.owner.email)
    for query, headers, matches in [
        ("payload.customer.id=42", admin_auth, 40),
        ("payload.customer.id=4200&payload.n=4200", admin_auth, 1),
        (f"q={big_table.some_id[:8]}", admin_auth, None),  # another id may share 8 digits
        (f"q={big_table.some_id}", admin_auth, 1),
        ("created_after=2026-02-28T12:00:00Z&created_before=2026-02-28T12:10:00Z", admin_auth, 600),
        ("payload.customer.id=100", owner_auth, 40),
    ]:
        for paging in ("page=1", "cursor="):
            url = f"/api/v1/events?limit=20&{query}&{paging}"
            answers: list[dict] = []
            plans = query_plans(app, partial(_collect, answers, client, url, headers))
            assert plans, url
            for plan in plans:
                assert "Seq Scan on events" not in plan, (url, plan)
            if paging == "page=1" and headers is admin_auth and matches is not None:
                assert answers[0]["total"] == matches, url
    plan = "\n".join(
        query_plans(app, lambda: _get(client, "/api/v1/events?payload.n=7", admin_auth))
    )
    assert "ix_events_payload" in plan, plan


# --- the embedded default ---------------------------------------------------------------------


def test_the_embedded_sqlite_default_answers_payload_filters_the_same(base_env, tmp_path):
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EVENTFLOW_INSTANCE_PATH"] = str(tmp_path)
    flask_cli(env, "db", "upgrade", check=True)
    app = create_app(
        {
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "EVENTFLOW_INSTANCE_PATH": str(tmp_path),
            "EVENTFLOW_ENV": "test",
            "TESTING": True,
        }
    )
    try:
        with app.app_context():
            assert db.engine.dialect.name == "sqlite"
            users.create_user("solo@example.com", "correct-horse")
        client = app.test_client()
        headers = bearer(client, "solo@example.com")
        _check_payload_cases(client, headers)
        big = _post(client, headers, {"big": 10**30})
        assert _both_ways(client, f"payload.big={10**30}", headers) == [big]
        first = _get(client, "/api/v1/events?limit=1", headers)["items"][0]["id"]
        assert _both_ways(client, f"q={first[:8]}", headers)[0] == first
        assert _both_ways(client, "created_after=2000-01-01", headers)[0] == first
        assert _both_ways(client, "created_before=2000-01-01", headers) == []
    finally:
        with app.app_context():
            db.engine.dispose()


# --- the dashboard's Events page --------------------------------------------------------------


def test_events_page_filters_by_payload_lines_time_and_prefix_and_the_url_keeps_them(
    app, client, make_user
):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    headers = bearer(client, admin.email)
    wanted = _post(client, headers, {"customer": {"id": 42}, "vip": True})
    _post(client, headers, {"customer": {"id": "42"}, "vip": True})
    _post(client, headers, {"customer": {"id": 42}, "vip": False})

    # The form sends its textarea; the page answers with the results and the canonical URL.
    form = {
        "q": "",
        "created_after": "2000-01-01T00:00",
        "created_before": "",
        "payload": "customer.id=42\r\n vip = true \r\n",
        "limit": "25",
    }
    response = client.get("/dashboard/events", query_string=form, headers=htmx())
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html
    assert html.count("data-event-id=") == 1 and wanted in html
    shared = response.headers["HX-Push-Url"]
    assert shared == (
        "/dashboard/events?created_after=2000-01-01T00:00&payload.customer.id=42&payload.vip=true"
    )

    # The shared URL reproduces the view, with the fields filled in.
    page = client.get(shared).get_data(as_text=True)
    assert page.count("data-event-id=") == 1 and wanted in page
    assert ">customer.id=42\nvip=true</textarea>" in page
    assert 'name="created_after" value="2000-01-01T00:00:00"' in page
    by_prefix = client.get(f"/dashboard/events?q={wanted[:10]}&payload.vip=true")
    assert wanted in by_prefix.get_data(as_text=True)
    # A time with its zone (an API-style link) shows in the field as UTC.
    zoned = client.get("/dashboard/events?created_before=2999-01-01T01:00:00%2B01:00")
    assert 'name="created_before" value="2999-01-01T00:00:00"' in zoned.get_data(as_text=True)
    assert zoned.get_data(as_text=True).count("data-event-id=") == 3


def test_events_page_shows_the_error_group_as_a_removable_chip(app, client, make_user):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    headers = bearer(client, admin.email)
    grouped, other = _post(client, headers), _post(client, headers)
    with app.app_context():
        db.session.execute(
            update(Event).where(Event.id == uuid.UUID(grouped)).values(error_group_id=17)
        )
        db.session.commit()
    html = client.get("/dashboard/events?error_group=17&type=SEARCHED").get_data(as_text=True)
    assert html.count("data-event-id=") == 1 and grouped in html and other not in html
    chip = html[html.index('class="chip"') : html.index("</p>", html.index('class="chip"'))]
    assert 'name="error_group" value="17"' in chip and "Error group 17" in chip
    assert 'href="/dashboard/events?type=SEARCHED"' in chip
    assert 'class="chip"' not in client.get("/dashboard/events").get_data(as_text=True)


def test_events_page_says_what_is_wrong_with_a_bad_search(client, make_user):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    for query, message in [
        ("payload=customer.id", "has no ="),
        ("payload.a%20b=1", "is not 1-8 keys"),
        ("payload=a..b%3D1", "is not 1-8 keys"),
        ("created_after=yesterday", "From: give a date and time in UTC"),
        ("created_before=2026-02-30T10:00", "To: give a date and time in UTC"),
        ("q=abc", "at least its first 8 hex digits"),
        ("error_group=x", "The error group is a group's number"),
    ]:
        for headers in ({}, htmx()):
            response = client.get(f"/dashboard/events?{query}", headers=headers)
            assert response.status_code == 400, query
            assert message in unescape(response.get_data(as_text=True)), query
