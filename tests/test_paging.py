"""Bounded paging: numbered pages stop at page * limit = 10,000; cursors walk any depth.

GET /api/v1/events and GET /api/v1/dlq, the dashboard's Events and DLQ lists, and the embedded
SQLite default.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from html import unescape

from sqlalchemy import event as sa_event
from sqlalchemy import text, update

from eventflow import create_app, users
from eventflow.extensions import db
from eventflow.models import Event, Status
from tests.conftest import bearer
from tests.processes import flask_cli
from tests.test_dashboard_views import htmx, log_in

NUMBERED_KEYS = {"items", "page", "limit", "total", "total_capped", "pages", "next_cursor"}
CURSOR_KEYS = {"items", "limit", "next_cursor"}


def _post(client, headers, event_type: str = "PAGE_VIEW") -> str:
    response = client.post(
        "/api/v1/events", json={"type": event_type, "payload": {}}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["eventId"]


def _get(client, url: str, headers) -> dict:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, (url, response.get_json())
    return response.get_json()


def _walk(client, url: str, headers) -> list[dict]:
    """Every page from `url` on, following next_cursor (in place of url's own) until it is null."""
    path, _, query = url.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("cursor=")]
    bodies = [_get(client, url, headers)]
    while bodies[-1]["next_cursor"] is not None:
        assert len(bodies) < 100, "the walk does not end"
        cursor = f"cursor={bodies[-1]['next_cursor']}"
        bodies.append(_get(client, f"{path}?{'&'.join([*params, cursor])}", headers))
        assert set(bodies[-1]) == CURSOR_KEYS
    return bodies


def _ids(bodies: list[dict]) -> list[str]:
    return [item["id"] for body in bodies for item in body["items"]]


def _error_code(response) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"]["code"]


def _set_status(app, ids, status: Status) -> None:
    with app.app_context():
        db.session.execute(
            update(Event).where(Event.id.in_([uuid.UUID(i) for i in ids])).values(status=status)
        )
        db.session.commit()


@contextlib.contextmanager
def _sql_sent(app):
    """The (statement, parameters) the app sends to the database while the block runs."""
    sent: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        sent.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)


def _event_queries(sent) -> list[str]:
    return [statement for statement, _ in sent if "FROM events" in statement]


# --- the bound ------------------------------------------------------------------------------


def test_page_times_limit_over_10000_is_400_page_too_deep_and_queries_no_events(
    app, client, auth, admin_auth
):
    _post(client, auth)
    for path, headers in [("/api/v1/events", auth), ("/api/v1/dlq", admin_auth)]:
        for query in ["page=101&limit=100", "page=10001&limit=1", "page=501", "page=10000000"]:
            with _sql_sent(app) as sent:
                response = client.get(f"{path}?{query}", headers=headers)
            assert _error_code(response) == "page_too_deep", (path, query)
            assert "use ?cursor= with next_cursor" in response.get_json()["error"]["message"]
            assert _event_queries(sent) == [], (path, query)
        # Exactly 10,000 rows deep is still allowed.
        for query in ["page=100&limit=100", "page=10000&limit=1", "page=500"]:
            assert _get(client, f"{path}?{query}", headers)["items"] == []


def test_huge_or_exotic_page_numbers_are_400_not_500(client, auth):
    for query, code in [
        ("page=" + "9" * 5000, "invalid_page"),
        ("page=%C2%B2", "invalid_page"),  # "²" passes str.isdigit() but not int()
        ("limit=%C2%B2", "invalid_limit"),
        ("page=999999999999999999", "page_too_deep"),
    ]:
        assert _error_code(client.get(f"/api/v1/events?{query}", headers=auth)) == code, query


# --- walking by cursor ------------------------------------------------------------------------


def test_cursor_walk_returns_each_of_250_events_once_newest_first_and_ends_with_null(
    client, make_user
):
    alice = bearer(client, make_user().email)
    bob = bearer(client, make_user().email)
    mine, theirs = [], []
    for n in range(250):
        mine.append(_post(client, alice))
        if n % 10 == 0:
            theirs.append(_post(client, bob))

    bodies = _walk(client, "/api/v1/events?limit=100", alice)
    first = bodies[0]
    assert set(first) == NUMBERED_KEYS
    assert first["total"] == 250 and first["page"] == 1 and first["pages"] == 3
    assert [len(body["items"]) for body in bodies] == [100, 100, 50]
    assert _ids(bodies) == mine[::-1]
    assert bodies[-1]["next_cursor"] is None

    # A walk that ends on a full page says so on that page: no empty page after it.
    by_fifty = _walk(client, "/api/v1/events?limit=50", alice)
    assert [len(body["items"]) for body in by_fifty] == [50] * 5
    assert _ids(by_fifty) == mine[::-1]

    # A cursor is a position, not a permission: Bob's cursor shows Alice only her own events.
    bobs_cursor = _get(client, "/api/v1/events?limit=5", bob)["next_cursor"]
    after_bobs = _walk(client, f"/api/v1/events?limit=100&cursor={bobs_cursor}", alice)
    assert set(_ids(after_bobs)) <= set(mine) and _ids(after_bobs)
    assert not set(_ids(after_bobs)) & set(theirs)


def test_events_ingested_during_a_walk_neither_shift_nor_repeat_items(client, auth):
    before = [_post(client, auth) for _ in range(60)]
    seen = []
    body = _get(client, "/api/v1/events?limit=25", auth)
    while True:
        seen.extend(item["id"] for item in body["items"])
        if body["next_cursor"] is None:
            break
        newcomers = [_post(client, auth) for _ in range(7)]
        body = _get(client, f"/api/v1/events?limit=25&cursor={body['next_cursor']}", auth)
    assert seen == before[::-1]

    # The newcomers are real: a fresh walk starts with them, newest first.
    fresh = _ids(_walk(client, "/api/v1/events?limit=25", auth))
    assert len(fresh) == 60 + 14 and fresh[:7] == newcomers[::-1]


def test_events_created_in_the_same_instant_are_each_listed_once(app, client, make_user):
    user = make_user()
    headers = bearer(client, user.email)
    instant = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    with app.app_context():
        moments = [instant + timedelta(seconds=1), *[instant] * 30, instant.replace(microsecond=0)]
        rows = [
            Event(user_id=user.id, type="TIED", payload={}, status="PENDING", created_at=moment)
            for moment in moments
        ]
        db.session.add_all(rows)
        db.session.commit()
        ids = [str(row.id) for row in rows]
    # Same created_at: the id breaks the tie, so the order is total and a cursor is exact.
    expected = [ids[0], *sorted(ids[1:31], reverse=True), ids[31]]
    assert _ids(_walk(client, "/api/v1/events?limit=7&cursor=", headers)) == expected


def test_cursor_pages_are_never_counted(app, client, auth):
    for _ in range(3):
        _post(client, auth)
    cursor = _get(client, "/api/v1/events?limit=1", auth)["next_cursor"]
    with _sql_sent(app) as sent:
        body = _get(client, f"/api/v1/events?limit=1&cursor={cursor}", auth)
    assert set(body) == CURSOR_KEYS and len(body["items"]) == 1
    queries = _event_queries(sent)
    assert len(queries) == 1 and "count(" not in queries[0].lower()


# --- filters ----------------------------------------------------------------------------------


def test_filters_hold_in_cursor_mode_exactly_as_on_numbered_pages(app, client, auth):
    posted = [_post(client, auth, ("ORDER_CREATED", "PAGE_VIEW")[n % 2]) for n in range(60)]
    failed = posted[::3]
    _set_status(app, failed, Status.FAILED)
    newest_first = posted[::-1]
    for query, expected in [
        ("type=PAGE_VIEW", [i for n, i in enumerate(posted) if n % 2][::-1]),
        ("status=FAILED", failed[::-1]),
        ("status=failed&type=ORDER_CREATED", [i for i in failed if posted.index(i) % 2 == 0][::-1]),
        ("status=PENDING", [i for i in newest_first if i not in failed]),
        ("", newest_first),
    ]:
        numbered = _get(client, f"/api/v1/events?limit=100&{query}", auth)
        walked = _walk(client, f"/api/v1/events?limit=7&{query}&cursor=", auth)
        assert _ids([numbered]) == expected, query
        assert _ids(walked) == expected, query
        assert set(walked[0]) == CURSOR_KEYS  # an empty cursor starts a count-free walk


def test_admin_walks_one_users_events_by_email_or_id(client, make_user, admin_auth):
    alice, bob = make_user(email="alice@example.com"), make_user()
    alice_auth, bob_auth = bearer(client, alice.email), bearer(client, bob.email)
    hers, his = [], []
    for _ in range(15):
        hers.append(_post(client, alice_auth))
        his.append(_post(client, bob_auth))
    by_email = _walk(client, "/api/v1/events?limit=4&user=ALICE@example.com", admin_auth)
    assert _ids(by_email) == hers[::-1]
    by_id = _walk(client, f"/api/v1/events?limit=4&user={bob.id}&cursor=", admin_auth)
    assert _ids(by_id) == his[::-1]
    everyone = _walk(client, "/api/v1/events?limit=4", admin_auth)
    assert sorted(_ids(everyone)) == sorted(hers + his) and len(_ids(everyone)) == 30


def test_dlq_walk_returns_every_failed_event_once_and_nothing_else(app, client, auth, admin_auth):
    posted = [_post(client, auth, ("ORDER_CREATED", "PAGE_VIEW")[n % 3 == 0]) for n in range(45)]
    failed = [i for n, i in enumerate(posted) if n % 4 != 1]  # 34 of 45
    _set_status(app, failed, Status.FAILED)

    bodies = _walk(client, "/api/v1/dlq?limit=10", admin_auth)
    assert set(bodies[0]) == NUMBERED_KEYS and bodies[0]["total"] == 34
    assert [len(body["items"]) for body in bodies] == [10, 10, 10, 4]
    assert _ids(bodies) == failed[::-1]
    assert {item["status"] for body in bodies for item in body["items"]} == {"FAILED"}

    page_views = _walk(client, "/api/v1/dlq?limit=4&type=PAGE_VIEW&cursor=", admin_auth)
    expected = [i for i in failed[::-1] if posted.index(i) % 3 == 0]
    assert _ids(page_views) == expected and expected


# --- bad input --------------------------------------------------------------------------------


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_malformed_or_tampered_cursors_are_400_invalid_cursor(client, auth, admin_auth):
    for _ in range(3):
        _post(client, auth)
    real = _get(client, "/api/v1/events?limit=1", auth)["next_cursor"]
    now, some_id = datetime.now(UTC), uuid.uuid4()
    bad = [
        "garbage!!",
        "null",
        "é",
        "x" * 500,
        _b64("hello, cursor"),
        _b64(b"\xff\xfe\xfd\xfc"),
        _b64(json.dumps({"created_at": now.isoformat(), "id": str(some_id)})),
        _b64(f"{now.isoformat()}|not-a-uuid"),
        _b64(f"{now.isoformat()}|{some_id}|extra"),
        _b64(f"{now.replace(tzinfo=None).isoformat()}|{some_id}"),  # no time zone
        _b64(f"{now.astimezone(timezone(timedelta(hours=1))).isoformat()}|{some_id}"),  # not UTC
        _b64(f"{now.isoformat()}|{some_id.hex}"),  # another spelling of the id
        real[:-4],
        real + "A",
        real + "==",
        real.replace("-", "+").replace("_", "/") + "*",
    ]
    for path, headers in [("/api/v1/events", auth), ("/api/v1/dlq", admin_auth)]:
        assert client.get(f"{path}?cursor={real}", headers=headers).status_code == 200
        for cursor in bad:
            response = client.get(path, query_string={"cursor": cursor}, headers=headers)
            assert _error_code(response) == "invalid_cursor", (path, cursor)
            assert set(response.get_json()) == {"error"}


def test_page_and_cursor_together_are_400(client, auth, admin_auth):
    for _ in range(2):
        _post(client, auth)
    cursor = _get(client, "/api/v1/events?limit=1", auth)["next_cursor"]
    for path, headers in [("/api/v1/events", auth), ("/api/v1/dlq", admin_auth)]:
        for query in [f"page=1&cursor={cursor}", "page=2&cursor=", f"cursor={cursor}&page=x"]:
            response = client.get(f"{path}?{query}", headers=headers)
            assert _error_code(response) == "page_and_cursor", (path, query)


# --- the query plan ---------------------------------------------------------------------------


def _plan(app, statement: str, parameters) -> str:
    with app.app_context():
        raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"EXPLAIN {statement}", parameters)
        return "\n".join(row[0] for row in cursor.fetchall())
    finally:
        raw.close()


def test_cursor_pages_of_a_big_table_are_range_scans_of_the_list_indexes(
    app, client, make_user, admin_auth
):
    crowd, alice = make_user(), make_user()
    alice_auth = bearer(client, alice.email)
    # 30,000 events, 1 in 100 Alice's, 1 in 89 FAILED, 1 in 97 of a rare type: the planner
    # has real statistics and a cheap full scan is no longer an option.
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO events (id, user_id, type, payload, status, attempts,"
                " replayed_attempts, created_at)"
                " SELECT gen_random_uuid(),"
                "  CASE WHEN g % 100 = 0 THEN CAST(:alice AS uuid) ELSE CAST(:crowd AS uuid) END,"
                "  CASE WHEN g % 97 = 0 THEN 'RARE' ELSE 'COMMON' END, '{}',"
                "  CASE WHEN g % 89 = 0 THEN 'FAILED' ELSE 'PROCESSED' END, 1, 0,"
                "  now() - g * interval '1 second'"
                " FROM generate_series(1, 30000) AS g"
            ),
            {"alice": str(alice.id), "crowd": str(crowd.id)},
        )
        db.session.commit()
        db.session.execute(text("ANALYZE events"))
        db.session.commit()
    for url, headers, index in [
        ("/api/v1/events?limit=20", alice_auth, "ix_events_user_id_created_at"),
        ("/api/v1/dlq?limit=20", admin_auth, "ix_events_status_created_at"),
        ("/api/v1/events?limit=20&type=RARE", admin_auth, "ix_events_type_created_at"),
    ]:
        cursor = _get(client, url, headers)["next_cursor"]
        with _sql_sent(app) as sent:
            _get(client, f"{url}&cursor={cursor}", headers)
        [(statement, parameters)] = [s for s in sent if "FROM events" in s[0]]
        plan = _plan(app, statement, parameters)
        # The keyset bound is part of the index condition: the scan starts at the cursor
        # instead of reading (and discarding) every newer row.
        assert f"Index Scan Backward using {index} on events" in plan, plan
        index_cond = next(line for line in plan.splitlines() if "Index Cond" in line)
        assert "created_at <=" in index_cond, plan
        assert "Sort Key" not in plan or "Presorted Key: created_at" in plan, plan


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_lists_refuse_too_deep_pages_with_a_friendly_message(app, client, make_user):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    for url, message in [
        ("/dashboard/events?page=401", "Page 401 is too deep"),  # 25 a page by default
        ("/dashboard/events?type=PAGE_VIEW&limit=100&page=101", "Page 101 is too deep"),
        ("/dashboard/dlq?page=100000000", "Page 100,000,000 is too deep"),
    ]:
        for headers in ({}, htmx()):
            with _sql_sent(app) as sent:
                response = client.get(url, headers=headers)
            html = unescape(response.get_data(as_text=True))
            assert response.status_code == 400, url
            assert message in html and "Narrow it with the filters" in html, url
            assert not [statement for statement, _ in sent if "OFFSET" in statement], url
    assert client.get("/dashboard/events?page=400").status_code == 200
    assert client.get("/dashboard/dlq?limit=100&page=100").status_code == 200


# --- the embedded default ---------------------------------------------------------------------


def test_cursor_paging_works_on_the_embedded_sqlite_default(base_env, tmp_path):
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
            user = users.create_user("solo@example.com", "correct-horse")
            instant = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
            # Five events to each instant: the id has to break the ties.
            rows = [
                Event(
                    user_id=user.id,
                    type=("ODD", "EVEN")[n % 2 == 0],
                    payload={},
                    status="PENDING",
                    created_at=instant + timedelta(seconds=n // 5),
                )
                for n in range(60)
            ]
            db.session.add_all(rows)
            db.session.commit()
            newest_first = sorted(rows, key=lambda r: (r.created_at, str(r.id)), reverse=True)
            expected = [str(row.id) for row in newest_first]
            evens = [str(row.id) for row in newest_first if row.type == "EVEN"]
        client = app.test_client()
        headers = bearer(client, "solo@example.com")

        seen = []
        body = _get(client, "/api/v1/events?limit=7", headers)
        while body["next_cursor"] is not None:
            seen.extend(item["id"] for item in body["items"])
            _post(client, headers)  # ingested mid-walk: newer, so never part of it
            body = _get(client, f"/api/v1/events?limit=7&cursor={body['next_cursor']}", headers)
        seen.extend(item["id"] for item in body["items"])
        assert seen == expected

        walked = _walk(client, "/api/v1/events?limit=4&type=EVEN&cursor=", headers)
        assert _ids(walked) == evens
        bad = client.get("/api/v1/events?cursor=" + _b64("hello, cursor"), headers=headers)
        assert _error_code(bad) == "invalid_cursor"
        deep = client.get("/api/v1/events?page=101&limit=100", headers=headers)
        assert _error_code(deep) == "page_too_deep"
    finally:
        with app.app_context():
            db.engine.dispose()


def test_one_users_events_of_one_status_are_a_range_of_one_index(
    app, client, make_user, admin_auth
):
    crowd, alice = make_user(), make_user()
    # 60,000 events, 1 in 100 Alice's, 1 in 7 FAILED. The user's index alone reads all of her
    # events to count her failed ones, the status index alone every failed event.
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO events (id, user_id, type, payload, status, attempts,"
                " replayed_attempts, created_at)"
                " SELECT gen_random_uuid(),"
                "  CASE WHEN g % 100 = 0 THEN CAST(:alice AS uuid) ELSE CAST(:crowd AS uuid) END,"
                "  'COMMON', '{}', CASE WHEN g % 7 = 0 THEN 'FAILED' ELSE 'PROCESSED' END, 1, 0,"
                "  now() - g * interval '1 second'"
                " FROM generate_series(1, 60000) AS g"
            ),
            {"alice": str(alice.id), "crowd": str(crowd.id)},
        )
        db.session.commit()
        db.session.execute(text("ANALYZE events"))
        db.session.commit()
    # By e-mail address or by id: either way the statement names her id, so the planner
    # knows how few events she has.
    for query in (f"user={alice.email}&page=1", f"user={alice.id}&cursor="):
        url = f"/api/v1/events?limit=20&status=FAILED&{query}"
        with _sql_sent(app) as sent:
            body = _get(client, url, admin_auth)
        statements = [s for s in sent if "FROM events" in s[0]]
        assert len(statements) == (2 if "page" in query else 1)  # the page and its count
        for statement, parameters in statements:
            plan = _plan(app, statement, parameters)
            assert "using ix_events_user_id_status_created_at on events" in plan, (url, plan)
            assert "Sort Key" not in plan or "Presorted Key: created_at" in plan, plan
        assert len(body["items"]) == 20
        assert {item["status"] for item in body["items"]} == {"FAILED"}
        assert body["next_cursor"] is not None
    assert _get(client, f"/api/v1/events?user={alice.email}&status=FAILED", admin_auth)[
        "total"
    ] == len(range(700, 60001, 700))


def test_a_count_of_one_error_groups_events_of_one_type_reads_only_the_group_index(
    app, client, make_user, admin_auth
):
    crowd = make_user()
    # 60,000 events, 1 in 10 failed in group 1, 5 in 6 of the common type.
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO events (id, user_id, type, payload, status, attempts,"
                " replayed_attempts, created_at, error_group_id)"
                " SELECT gen_random_uuid(), CAST(:crowd AS uuid),"
                "  CASE WHEN g % 6 = 0 THEN 'RARE' ELSE 'COMMON' END, '{}',"
                "  CASE WHEN g % 10 = 0 THEN 'FAILED' ELSE 'PROCESSED' END, 1, 0,"
                "  now() - g * interval '1 second',"
                "  CASE WHEN g % 10 = 0 THEN 1 END"
                " FROM generate_series(1, 60000) AS g"
            ),
            {"crowd": str(crowd.id)},
        )
        db.session.commit()
        with db.engine.connect() as conn:
            # As on any table that has been vacuumed: the count needs no row but the index's.
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE events")
            )
    url = "/api/v1/events?limit=20&error_group=1&type=COMMON"
    with _sql_sent(app) as sent:
        body = _get(client, url, admin_auth)
    [count] = [s for s in sent if "count" in s[0] and "FROM events" in s[0]]
    plan = _plan(app, *count)
    assert "Index Only Scan using ix_events_error_group_id_created_at on events" in plan, plan
    assert body["total"] == len([g for g in range(10, 60001, 10) if g % 6])
    assert {item["type"] for item in body["items"]} == {"COMMON"}
