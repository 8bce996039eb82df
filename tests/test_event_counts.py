"""Per-(type, status) counts kept as events move, the reads that use them, and capped totals.

The counts are kept by triggers on `events` (migration 0010): these tests move events through
every real path (HTTP ingest, workers, retries, the DLQ, replay, deletes) and hold the counts
to COUNT(*) of the rows, read in one statement so both sides see the same moment.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid

import requests
from sqlalchemy import event as sa_event
from sqlalchemy import text, update

from eventflow import users
from eventflow.counts import CAP
from eventflow.extensions import db
from eventflow.models import Event, Status
from eventflow.stats import snapshot
from eventflow.tasks.queue import get_queue
from tests.conftest import bearer
from tests.pipeline import api_get, ingest, wait_terminal
from tests.processes import flask_cli
from tests.test_dashboard_views import log_in

# Every (type, status) whose kept count differs from the rows' COUNT(*): one statement, one
# snapshot, so it holds at any moment (the counts change in the transaction of each move).
MISMATCHES = text(
    """
    SELECT type, status, rows.n AS counted, kept.n AS kept
    FROM (SELECT type, status, count(*) AS n FROM events GROUP BY type, status) AS rows
    FULL JOIN (SELECT type, status, sum(count) AS n FROM event_counts GROUP BY type, status
               HAVING sum(count) <> 0) AS kept USING (type, status)
    WHERE rows.n IS DISTINCT FROM kept.n
    """
)
# A statement reading the table (not event_counts or event_attempts, nor the size of it that
# the infrastructure panel asks the catalog for).
READS_EVENTS = re.compile(r"\b(FROM|JOIN)\s+events\b", re.IGNORECASE)


def mismatches(app) -> list[tuple]:
    with app.app_context():
        rows = [tuple(row) for row in db.session.execute(MISMATCHES)]
        db.session.rollback()
    return rows


def statements_of(app, call) -> list[str]:
    """The SQL statements call() sends, in an app context."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, _parameters, _context, _executemany):
        sent.append(statement)

    with app.app_context():
        sa_event.listen(db.engine, "before_cursor_execute", record)
        try:
            call()
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", record)
    return sent


def test_counts_stay_equal_to_the_rows_through_processing_retries_dlq_replay_and_delete(
    app, client, make_user, worker, tmp_path
):
    admin = bearer(client, make_user(admin=True).email)
    owner = make_user()
    headers = bearer(client, owner.email)
    switch = tmp_path / "failing"
    switch.write_text("on")
    payloads = [
        *[("TEST_OK", {"n": i}) for i in range(6)],
        *[("TEST_FLAKY", {"succeed_on": 2}) for _ in range(3)],
        *[("TEST_PERMANENT", {}) for _ in range(3)],
        *[("TEST_TOGGLE", {"fail_while": str(switch)}) for _ in range(2)],
    ]
    ids = [ingest(client, headers, event_type, payload) for event_type, payload in payloads]
    batch = client.post(
        "/api/v1/events/batch",
        json={"events": [{"type": "TEST_OK", "payload": {"b": i}} for i in range(4)]},
        headers=headers,
    )
    ids += [item["eventId"] for item in batch.get_json()["items"]]
    deadline = time.monotonic() + 30  # a guard against a hang, not a timed assertion
    while current_statuses(app, ids) - {"PROCESSED", "FAILED"} and time.monotonic() < deadline:
        assert mismatches(app) == []  # also while workers claim, retry and fail them
    wait_terminal(app, ids)
    assert mismatches(app) == []
    dlq = api_get(client, admin, "/dlq")
    assert dlq["total"] == 5 and dlq["total_capped"] is False
    assert api_get(client, admin, "/dlq?type=TEST_TOGGLE")["total"] == 2

    switch.unlink()
    replayed = client.post("/api/v1/dlq/replay", json={"type": "TEST_TOGGLE"}, headers=admin)
    assert replayed.get_json() == {"replayed": 2}
    wait_terminal(app, ids)
    assert mismatches(app) == []
    assert api_get(client, admin, "/dlq")["total"] == 3
    assert api_get(client, admin, "/events?status=PROCESSED")["total"] == 15

    with app.app_context():
        assert users.delete_user(owner.email) == 18
    assert mismatches(app) == []
    assert api_get(client, admin, "/events")["total"] == 0


def current_statuses(app, ids) -> set[str]:
    """The statuses the events are in now."""
    with app.app_context():
        keys = [uuid.UUID(i) for i in ids]
        rows = db.session.execute(
            text("SELECT status FROM events WHERE id = ANY(:ids)"), {"ids": keys}
        )
        found = {row.status for row in rows}
        db.session.rollback()
    return found


def test_concurrent_ingest_from_many_threads_through_gunicorn_leaves_exact_counts(
    app, client, make_user, start_server
):
    server = start_server()
    tokens = [bearer(client, make_user().email) for _ in range(4)]
    types = ["order.created", "page.view", "signup"]
    errors: list[BaseException] = []

    def send(thread: int) -> None:
        try:
            with requests.Session() as session:
                for i in range(25):
                    body = {"type": types[(thread + i) % 3], "payload": {"i": i}}
                    response = session.post(
                        f"{server}/api/v1/events",
                        json=body,
                        headers=tokens[thread % 4],
                        timeout=30,
                    )
                    assert response.status_code == 202, response.text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert mismatches(app) == []
    admin = bearer(client, make_user(admin=True).email)
    assert api_get(client, admin, "/events")["total"] == 400
    signups = sum(1 for t in range(16) for i in range(25) if (t + i) % 3 == 2)
    assert api_get(client, admin, "/events?type=signup&status=PENDING")["total"] == signups


def test_the_live_snapshot_and_metrics_read_the_counts_not_the_events(app, client, make_user):
    headers = bearer(client, make_user().email)
    ids = [ingest(client, headers, "TEST_OK", {"n": i}) for i in range(5)]
    with app.app_context():
        for moved, status in ((ids[:2], Status.FAILED), (ids[2:3], Status.DISCARDED)):
            db.session.execute(
                update(Event)
                .where(Event.id.in_([uuid.UUID(i) for i in moved]))
                .values(status=status.value)
            )
        db.session.commit()
    assert mismatches(app) == []
    taken: dict = {}
    sent = statements_of(app, lambda: taken.update(snapshot(get_queue().stats)))
    assert [s for s in sent if READS_EVENTS.search(s)] == []
    assert (taken["queue_depth"], taken["dlq_size"], taken["processing"]) == (2, 2, 0)

    scraped = statements_of(app, lambda: taken.update(metrics=client.get("/metrics").text))
    assert [s for s in scraped if READS_EVENTS.search(s)] == []
    assert "eventflow_dlq_size 2.0" in taken["metrics"]
    assert "eventflow_queue_depth 2.0" in taken["metrics"]


def test_totals_past_ten_thousand_are_capped_and_shown_as_10000_plus(app, client, make_user):
    owner = make_user()
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO events (id, user_id, type, payload, status, attempts, "
                "replayed_attempts, created_at) SELECT gen_random_uuid(), :user, 'bulk', "
                "'{}', 'PENDING', 0, 0, now() - n * interval '1 ms' "
                "FROM generate_series(1, :n) AS n"
            ),
            {"user": owner.id, "n": CAP + 1},
        )
        db.session.commit()
    own = api_get(client, bearer(client, owner.email), "/events?limit=100")
    assert (own["total"], own["total_capped"], own["pages"]) == (10_000, True, 100)
    assert len(own["items"]) == 100

    admin = make_user(admin=True, email="counts-admin@example.com")
    everyone = api_get(client, bearer(client, admin.email), "/events")
    assert (everyone["total"], everyone["total_capped"]) == (10_001, False)  # the counters

    assert log_in(client, admin.email).status_code == 302
    page = client.get(f"/dashboard/events?user={owner.email}").get_data(as_text=True)
    assert "<strong>10,000+</strong> events" in page
    assert "Page 1 of 400+" in page
    unfiltered = client.get("/dashboard/events").get_data(as_text=True)
    assert "<strong>10,001</strong> events" in unfiltered


def test_the_migration_counts_existing_events_and_sqlite_triggers_keep_the_counts(
    base_env, tmp_path
):
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EVENTFLOW_INSTANCE_PATH"] = str(tmp_path)
    flask_cli(env, "db", "upgrade", "0006", check=True)
    database = tmp_path / "eventflow.sqlite3"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO users (id, email, password_hash, role, created_at, "
            "token_generation) VALUES ('u1', 'a@b.c', 'x', 'user', '2026-01-01', 0)"
        )
        for n in range(4):
            conn.execute(
                "INSERT INTO events (id, user_id, type, payload, status, attempts, "
                "replayed_attempts, created_at) VALUES (?, 'u1', ?, '{}', 'PENDING', 0, 0, "
                "'2026-01-01')",
                (f"e{n}", "a" if n < 3 else "b"),
            )
    flask_cli(env, "db", "upgrade", check=True)  # 0010 counts the events already there
    with sqlite3.connect(database) as conn:
        assert kept_counts(conn) == {("a", "PENDING"): 3, ("b", "PENDING"): 1}
        conn.execute("UPDATE events SET status = 'FAILED' WHERE id IN ('e0', 'e3')")
        conn.execute("UPDATE events SET attempts = 1")  # no status change: no count change
        conn.execute("DELETE FROM events WHERE id = 'e1'")
        assert kept_counts(conn) == {("a", "FAILED"): 1, ("a", "PENDING"): 1, ("b", "FAILED"): 1}


def kept_counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT type, status, sum(count) FROM event_counts GROUP BY 1, 2 HAVING sum(count) <> 0"
    )
    return {(t, s): n for t, s, n in rows}
