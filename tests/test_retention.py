"""Retention (CONTRACT §11): `flask events purge` deletes exactly the finished events it names,
with their attempts, a batch per transaction, safely while ingest and workers run; with
EVENTFLOW_RETENTION_DAYS the workers run it once per interval across all of them."""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import datetime, timedelta

import psycopg2
import pytest
from sqlalchemy import func, insert, select

from eventflow import create_app, retention, users
from eventflow.extensions import db
from eventflow.models import Event, EventAttempt, Outcome, Status, utcnow
from eventflow.tasks.queue import get_queue
from tests.conftest import bearer
from tests.pipeline import PRELOAD, ingest, statuses, wait_terminal
from tests.processes import wait_for

OLD, RECENT = 40, 10  # days: older and younger than the 30d the tests purge


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture
def seed(app, owner):
    """Factory: seed(status, age, n=1) -> ids of n events of that status created `age` ago,
    each with one attempt made."""

    def add(status: Status, age: timedelta, n: int = 1) -> list[str]:
        created = utcnow() - age
        ids = [uuid.uuid4() for _ in range(n)]
        with app.app_context():
            db.session.execute(
                insert(Event),
                [
                    {
                        "id": i,
                        "user_id": owner.id,
                        "type": "OLD",
                        "payload": {},
                        "status": status.value,
                        "attempts": 1,
                        "created_at": created,
                        "next_attempt_at": created,
                    }
                    for i in ids
                ],
            )
            db.session.execute(
                insert(EventAttempt),
                [
                    {"event_id": i, "number": 1, "started_at": created, "outcome": "succeeded"}
                    for i in ids
                ],
            )
            db.session.commit()
        return [str(i) for i in ids]

    return add


def days(n: float) -> timedelta:
    return timedelta(days=n)


def remaining(app, ids) -> set[str]:
    with app.app_context():
        found = db.session.scalars(
            select(Event.id).where(Event.id.in_([uuid.UUID(i) for i in ids]))
        )
        return {str(i) for i in found}


def attempts_of(app, ids) -> int:
    with app.app_context():
        keys = [uuid.UUID(i) for i in ids]
        return db.session.scalar(
            select(func.count()).select_from(EventAttempt).where(EventAttempt.event_id.in_(keys))
        )


def purge(runner, *args: str):
    return runner.invoke(args=["events", "purge", *args])


# --- what it deletes ---------------------------------------------------------------------------


def test_purge_deletes_old_processed_and_discarded_events_with_their_attempts(app, runner, seed):
    doomed = seed(Status.PROCESSED, days(OLD), 3) + seed(Status.DISCARDED, days(OLD), 2)
    kept = (
        seed(Status.PROCESSED, days(RECENT), 2)
        + seed(Status.DISCARDED, days(RECENT))
        + seed(Status.FAILED, days(OLD), 2)
        + [seed(s, days(OLD))[0] for s in (Status.PENDING, Status.PROCESSING, Status.RETRYING)]
    )
    result = purge(runner, "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Deleted 5 event(s) created before ")
    assert "(PROCESSED 3, DISCARDED 2)" in result.output
    assert remaining(app, doomed + kept) == set(kept)
    assert attempts_of(app, doomed) == 0
    assert attempts_of(app, kept) == len(kept)


def test_ages_in_hours_and_minutes(app, runner, seed):
    two_hours = seed(Status.PROCESSED, timedelta(hours=2))
    one_hour = seed(Status.PROCESSED, timedelta(hours=1))
    assert "Deleted 1 event(s)" in purge(runner, "--older-than", "90m").output
    assert remaining(app, two_hours + one_hour) == set(one_hour)
    assert "Deleted 1 event(s)" in purge(runner, "--older-than", "59m").output
    assert remaining(app, one_hour) == set()


def test_failed_events_are_purged_only_when_named(app, runner, seed):
    failed = seed(Status.FAILED, days(OLD), 2)
    processed = seed(Status.PROCESSED, days(OLD))
    purge(runner, "--older-than", "30d")
    assert remaining(app, failed) == set(failed)
    result = purge(runner, "--older-than", "30d", "--status", "failed")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 event(s)" in result.output and "(FAILED 2)" in result.output
    assert remaining(app, failed + processed) == set()


def test_a_dry_run_reports_the_same_number_and_deletes_nothing(app, runner, seed):
    ids = seed(Status.PROCESSED, days(OLD), 4) + seed(Status.FAILED, days(OLD), 3)
    ids += seed(Status.PROCESSED, days(RECENT))
    statuses = "PROCESSED,FAILED"
    dry = purge(runner, "--older-than", "30d", "--status", statuses, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("Would delete 7 event(s) created before ")
    assert remaining(app, ids) == set(ids)
    real = purge(runner, "--older-than", "30d", "--status", statuses)
    assert real.output.startswith("Deleted 7 event(s)")
    assert "(PROCESSED 4, FAILED 3)" in dry.output and "(PROCESSED 4, FAILED 3)" in real.output


def test_waiting_and_running_events_are_never_purged(app, runner, seed):
    for status in ("PENDING", "PROCESSING", "RETRYING", "PROCESSED,RETRYING"):
        ids = seed(Status.PROCESSED, days(OLD)) + seed(Status[status.split(",")[-1]], days(OLD))
        result = purge(runner, "--older-than", "30d", "--status", status)
        assert result.exit_code == 1, status
        assert "events are never purged: they are still to be processed" in result.output
        assert remaining(app, ids) == set(ids)


BAD_ARGUMENTS = [
    ["--older-than", "30"],
    ["--older-than", "0d"],
    ["--older-than", "2w"],
    ["--older-than", "-1d"],
    [],
    ["--older-than", "30d", "--status", "DONE"],
    ["--older-than", "30d", "--status", ","],
    ["--older-than", "30d", "--batch-size", "5001"],
    ["--older-than", "30d", "--batch-size", "0"],
]


def test_bad_arguments_are_usage_errors_that_delete_nothing(app, runner, seed):
    ids = seed(Status.PROCESSED, days(OLD))
    for args in BAD_ARGUMENTS:
        result = purge(runner, *args)
        assert result.exit_code == 2, (args, result.output)
    assert remaining(app, ids) == set(ids)


@pytest.fixture
def delete_probe(database_url):
    """Records, per transaction, how many events each DELETE statement removed."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            """
            CREATE TABLE purge_probe (txid bigint, deleted int);
            CREATE FUNCTION purge_probe_record() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO purge_probe SELECT txid_current(), count(*) FROM gone;
              RETURN NULL;
            END $$;
            CREATE TRIGGER purge_probe AFTER DELETE ON events REFERENCING OLD TABLE AS gone
              FOR EACH STATEMENT EXECUTE FUNCTION purge_probe_record();
            """
        )

    def per_transaction() -> list[int]:
        with conn.cursor() as cur:
            cur.execute("SELECT sum(deleted) FROM purge_probe GROUP BY txid ORDER BY min(txid)")
            return [row[0] for row in cur.fetchall()]

    yield per_transaction
    with conn.cursor() as cur:
        cur.execute(
            "DROP TRIGGER purge_probe ON events; DROP FUNCTION purge_probe_record();"
            " DROP TABLE purge_probe;"
        )
    conn.close()


def test_each_transaction_deletes_at_most_the_batch_size(app, runner, seed, delete_probe):
    ids = seed(Status.PROCESSED, days(OLD), 10)
    result = purge(runner, "--older-than", "30d", "--batch-size", "3")
    assert result.output.startswith("Deleted 10 event(s)")
    assert "in 4 batch(es), " in result.output
    assert remaining(app, ids) == set()
    # The database's own account: four transactions, none over three events.
    assert delete_probe() == [3, 3, 3, 1]


# --- alongside ingest and workers --------------------------------------------------------------


def test_a_purge_racing_ingest_and_a_worker_loses_nothing_it_should_keep(
    app, seed, owner, client, start_server, start_worker, tmp_path
):
    old_processed = seed(Status.PROCESSED, days(OLD), 1000)
    old_failed = seed(Status.FAILED, days(OLD), 100)
    old_waiting = seed(Status.PENDING, days(OLD), 300)  # sent to the worker mid-purge
    start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json")
    url = start_server(PRELOAD)
    headers = bearer(client, owner.email)

    purging = threading.Event()
    ingested: list[str] = []

    def ingest_while_purging() -> None:
        while purging.is_set() or len(ingested) < 30:
            ingested.append(ingest(url, headers, "NEW", {"n": len(ingested)}))

    def after_batch() -> None:
        if not sent.is_set():  # the worker claims and completes old events while the purge goes on
            sent.set()
            get_queue().enqueue(old_waiting)

    sent = threading.Event()
    purging.set()
    loader = threading.Thread(target=ingest_while_purging)
    loader.start()
    try:
        wait_for(lambda: len(ingested) >= 20, message="ingest to be under way")
        with app.app_context():
            report = retention.purge_events(days(30), batch_size=20, after_batch=after_batch)
    finally:
        purging.clear()
        loader.join()
    assert report.batches >= 50 and report.by_status["PROCESSED"] >= 1000

    wait_terminal(app, ingested, timeout=60)
    wait_for(
        lambda: all(s == "PROCESSED" for s in statuses(app, old_waiting).values()),
        message="the old waiting events to be processed",
    )
    assert remaining(app, old_processed) == set()
    assert remaining(app, old_failed) == set(old_failed)
    assert remaining(app, ingested) == set(ingested)  # every event accepted meanwhile is kept
    # An old waiting event is gone only if the worker processed it first (then it was PROCESSED
    # and old, so the purge could take it); none was deleted while it waited or ran.
    gone = set(old_waiting) - remaining(app, old_waiting)
    lines = (tmp_path / "worker-0.log").read_text().splitlines()
    processed = {
        line["event_id"]
        for line in map(json.loads, filter(lambda text: text.startswith("{"), lines))
        if line.get("logger") == "eventflow.attempt" and line.get("outcome") == "processed"
    }
    assert gone <= processed
    with app.app_context():
        outcomes = db.session.scalars(
            select(EventAttempt.outcome).where(
                EventAttempt.event_id.in_([uuid.UUID(i) for i in ingested])
            )
        ).all()
    assert set(outcomes) == {Outcome.SUCCEEDED.value} and len(outcomes) == len(ingested)


# --- the workers' daily run --------------------------------------------------------------------


PURGE_LINE = re.compile(r"^purge: deleted ([\d,]+) event\(s\) .* batch\(es\), ([\d.]+) s ")


def purge_runs(tmp_path, workers: int) -> list[tuple[datetime, int]]:
    """(start, events deleted) of each purge the workers logged, in time order: a line is
    written when its purge ends, and says how long it took."""
    runs = []
    for n in range(workers):
        for text in (tmp_path / f"worker-{n}.log").read_text().splitlines():
            line = json.loads(text) if text.startswith("{") else {}
            if line.get("logger") == "eventflow.retention":
                deleted, seconds = PURGE_LINE.match(line["message"]).groups()
                ended = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
                runs.append(
                    (ended - timedelta(seconds=float(seconds)), int(deleted.replace(",", "")))
                )
    return sorted(runs)


def test_the_periodic_purge_runs_once_per_interval_across_two_workers(
    app, seed, start_worker, tmp_path
):
    interval = 1.0
    old = seed(Status.PROCESSED, days(3), 20)
    recent = seed(Status.PROCESSED, timedelta(hours=12))
    failed = seed(Status.FAILED, days(3))
    settings = {
        "EVENTFLOW_RETENTION_DAYS": "1",
        "EVENTFLOW_RETENTION_INTERVAL_SECONDS": str(interval),
        "EVENTFLOW_LOG_FORMAT": "json",
    }
    for _ in range(2):  # each checks every recovery interval (0.5 s in the tests)
        start_worker("--workers", "1", **settings)

    wait_for(lambda: not remaining(app, old), timeout=30, message="the first purge")
    runs = wait_for(
        lambda: (found := purge_runs(tmp_path, 2)) and len(found) >= 3 and found,
        timeout=30,
        message="three purges",
    )
    assert remaining(app, recent + failed) == set(recent + failed)
    assert runs[0][1] == 20 and all(deleted == 0 for _, deleted in runs[1:])
    # Two workers asking four times an interval, yet never two runs in one interval.
    gaps = [
        (later - earlier).total_seconds()
        for (earlier, _), (later, _) in zip(runs, runs[1:], strict=False)
    ]
    assert min(gaps) > interval * 0.75, gaps


def test_the_embedded_default_purges_on_sqlite_too(base_env, tmp_path):
    embedded = {"DATABASE_URL": "", "REDIS_URL": "", "EVENTFLOW_INSTANCE_PATH": str(tmp_path)}
    app = create_app({**base_env, **embedded, "TESTING": True})
    with app.app_context():
        db.create_all()  # the migrations' schema (tests/test_migrations.py holds them equal)
        user = users.create_user("owner@example.com", "correct-horse")
        old = utcnow() - days(OLD)
        events = [
            Event(user_id=user.id, type="OLD", payload={}, status=s.value, created_at=old)
            for s in (Status.PROCESSED, Status.PROCESSED, Status.DISCARDED, Status.FAILED)
        ]
        db.session.add_all(events)
        db.session.flush()
        db.session.add_all(EventAttempt(event_id=e.id, number=1) for e in events)
        db.session.commit()
    result = app.test_cli_runner().invoke(
        args=["events", "purge", "--older-than", "30d", "--batch-size", "2"]
    )
    assert result.output.startswith("Deleted 3 event(s)"), result.output
    assert "in 2 batch(es)" in result.output
    with app.app_context():
        assert db.session.scalars(select(Event.status)).all() == ["FAILED"]
        assert db.session.scalar(select(func.count()).select_from(EventAttempt)) == 1
