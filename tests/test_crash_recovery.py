"""Nothing accepted is lost and every handler effect happens once (CONTRACT §6, NOTES: Huey).

Crashes, signals and Redis losses end with every accepted event terminal; effects are counted
from the effects file, not sampled. Destructive Redis tests use a private redis-server.
"""

from __future__ import annotations

import os
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
import redis
import requests
from sqlalchemy import event as sa_event
from sqlalchemy import select, text, update

from eventflow.extensions import db
from eventflow.models import Event, Worker, utcnow
from eventflow.tasks.queue import get_queue
from eventflow.tasks.recovery import recover
from eventflow.tasks.transitions import (
    claim_events,
    complete_events,
    count_waiting,
    find_orphans,
    touch_waiting,
)
from tests.pipeline import (
    PRELOAD,
    attempt_rows,
    events_by_id,
    ingest,
    query_plans,
    read_effects,
    statuses,
    wait_terminal,
)
from tests.processes import Process, free_port, start_redis, wait_for


class PrivateRedis:
    """A redis-server of this test's own, without persistence, that the test may stop."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = tmp_path / "redis.log"
        self.proc: Process | None = None

    def start(self) -> None:
        """Start it (again) on its port; its log carries on."""
        self.proc, _ = start_redis(self.log_path, port=self.port)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_server(app, start_server):
    """gunicorn on the test database and Redis, app preloaded (see tests.pipeline.PRELOAD)."""
    return start_server(PRELOAD)


def _processing(app) -> dict[str, str]:
    """PROCESSING events -> the worker holding them."""
    with app.app_context():
        rows = db.session.execute(
            select(Event.id, Event.locked_by).where(Event.status == "PROCESSING")
        ).all()
        return {str(r.id): r.locked_by for r in rows}


def _worker_rows(app) -> list[Worker]:
    with app.app_context():
        rows = db.session.scalars(select(Worker)).all()
        db.session.expunge_all()
        return list(rows)


def _queue_length(redis_client: redis.Redis) -> int:
    return redis_client.llen("huey.redis.eventflow")


def _assert_each_effect_once(effects: Path, ids, at_least_once=()) -> None:
    """Every event's handler ran to its effect exactly once (at least once for those given)."""
    counts = {i: len(attempts) for i, attempts in read_effects(effects).items()}
    assert set(counts) == set(ids)
    assert {i: n for i, n in counts.items() if i not in at_least_once} == {
        i: 1 for i in ids if i not in at_least_once
    }
    assert all(counts[i] >= 1 for i in at_least_once)


def test_kill_9_of_a_worker_mid_handler_loses_nothing(
    live_server, auth, app, start_worker, tmp_path
):
    first = start_worker("--workers", "2", "--processes")
    effects = tmp_path / "effects"
    slow = {"effects": str(effects), "seconds": 1.5}
    slow_ids = [ingest(live_server, auth, "TEST_SLOW", slow) for _ in range(4)]
    ids = slow_ids + [
        ingest(live_server, auth, "TEST_OK", {"effects": str(effects)}) for _ in range(10)
    ]
    wait_for(lambda: set(_processing(app)) & set(slow_ids), message="a slow handler running")

    first.kill()
    interrupted = set(_processing(app))
    assert interrupted
    start_worker("--workers", "2", "--processes")

    assert set(wait_terminal(app, ids).values()) == {"PROCESSED"}
    _assert_each_effect_once(effects, ids, at_least_once=interrupted)
    for event_id in interrupted:
        outcomes = [r["outcome"] for r in attempt_rows(app, event_id)]
        assert outcomes == ["lost", "succeeded"]
        assert events_by_id(app, [event_id])[event_id]["attempts"] == 2
    assert not any(r["outcome"] == "running" for i in ids for r in attempt_rows(app, i))


@pytest.mark.parametrize(
    "mode, stop", [("threads", "SIGTERM"), ("processes", "SIGTERM"), ("processes", "Ctrl-C")]
)
def test_sigterm_or_ctrl_c_mid_handler_lets_in_flight_events_finish(
    mode, stop, client, auth, app, start_worker, tmp_path
):
    args = ["--workers", "2"] + (["--processes"] if mode == "processes" else [])
    first = start_worker(*args)
    effects = tmp_path / "effects"
    slow = {"effects": str(effects), "seconds": 1.5}
    ids = [ingest(client, auth, "TEST_SLOW", slow) for _ in range(4)]

    def two_in_flight():
        # Heartbeats: one row per process, saying which events it is running.
        rows, running = _worker_rows(app), _processing(app)
        reported = {e for w in rows for e in (w.current_events or "").split()}
        busy = len(running) == 2 and sum(w.in_flight for w in rows) == 2
        return (rows, set(running)) if busy and reported == set(running) else None

    rows, in_flight = wait_for(two_in_flight, message="two events mid-handler, per heartbeats")
    if stop == "SIGTERM":
        first.signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C signals the whole foreground process group
        os.killpg(first.pid, signal.SIGINT)
    wait_for(lambda: first.proc.poll() is not None, message=f"the worker to exit on {stop}")
    assert first.proc.returncode == 0, first.output()
    if mode == "processes":
        assert len(rows) == 2 and all(w.concurrency == 1 for w in rows)
        assert first.pid not in {w.pid for w in rows}
    else:
        assert [(w.pid, w.concurrency) for w in rows] == [(first.pid, 2)]

    after = statuses(app, ids)
    assert {after[i] for i in in_flight} == {"PROCESSED"}
    assert "PROCESSING" not in after.values()
    assert _worker_rows(app) == []
    for event_id in in_flight:
        assert [r["outcome"] for r in attempt_rows(app, event_id)] == ["succeeded"]

    start_worker(*args)
    assert set(wait_terminal(app, ids).values()) == {"PROCESSED"}
    _assert_each_effect_once(effects, ids)


def test_flushall_with_events_queued_and_retries_scheduled_loses_nothing(
    private_redis, app, auth, start_server, start_worker, tmp_path
):
    server = start_server(PRELOAD, REDIS_URL=private_redis.url)
    store = private_redis.client()
    effects = tmp_path / "effects"
    queued = [ingest(server, auth, "TEST_OK", {"effects": str(effects)}) for _ in range(20)]
    assert _queue_length(store) == 20
    store.flushall()

    start_worker("--workers", "2", REDIS_URL=private_redis.url)
    flaky = [ingest(server, auth, "TEST_FLAKY", {"effects": str(effects)}) for _ in range(5)]
    wait_for(lambda: "RETRYING" in statuses(app, flaky).values(), message="a retry to be scheduled")
    store.flushall()

    assert set(wait_terminal(app, queued + flaky).values()) == {"PROCESSED"}
    done = read_effects(effects)
    assert {i: done[i] for i in queued} == {i: [1] for i in queued}
    assert {i: done[i] for i in flaky} == {i: [1, 2, 3] for i in flaky}


def test_redis_stopped_during_ingest_still_accepts_and_processes_everything_when_it_returns(
    private_redis, app, auth, start_server, start_worker, tmp_path
):
    server = start_server(PRELOAD, REDIS_URL=private_redis.url)
    worker = start_worker("--workers", "2", REDIS_URL=private_redis.url)
    effects = tmp_path / "effects"
    before = [ingest(server, auth, "TEST_OK", {"effects": str(effects)}) for _ in range(3)]
    wait_terminal(app, before)

    private_redis.stop()
    during = [ingest(server, auth, "TEST_OK", {"effects": str(effects)}) for _ in range(10)]
    assert set(statuses(app, during).values()) == {"PENDING"}
    health = requests.get(f"{server}/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert health.json()["checks"]["database"] == "ok"
    assert health.json()["checks"]["queue"] != "ok"

    private_redis.start()  # back, empty: the messages for `during` were never sent
    assert requests.get(f"{server}/health", timeout=10).status_code == 200
    assert set(wait_terminal(app, before + during).values()) == {"PROCESSED"}
    _assert_each_effect_once(effects, before + during)
    assert worker.proc.poll() is None


def test_a_long_handler_runs_once_despite_duplicate_messages_two_workers_and_its_lock_age(
    client, app, auth, start_worker, tmp_path
):
    start_worker("--workers", "2")
    start_worker("--workers", "2", "--processes")
    effects = tmp_path / "effects"
    # Longer than the visibility timeout (3 s): only the heartbeat keeps it from recovery.
    payload = {"effects": str(effects), "seconds": 4}
    event_id = ingest(client, auth, "TEST_SLOW", payload)
    with app.app_context():
        queue = get_queue()
        queue.enqueue([uuid.UUID(event_id)] * 10)
        assert wait_terminal(app, [event_id]) == {event_id: "PROCESSED"}
        queue.enqueue([uuid.UUID(event_id)] * 5)
    # FIFO: once a later event is processed, every duplicate before it has been taken.
    wait_terminal(app, [ingest(client, auth, "TEST_OK", {})])
    assert read_effects(effects) == {event_id: [1]}
    assert [r["outcome"] for r in attempt_rows(app, event_id)] == ["succeeded"]


def test_recovery_resends_only_lost_messages_and_never_floods_a_waiting_backlog(
    client, app, auth, redis_url
):
    backlog = 50
    for _ in range(backlog):
        client.post("/api/v1/events", json={"type": "TEST_OK", "payload": {}}, headers=auth)
    store = redis.Redis.from_url(redis_url)
    with app.app_context():
        # Make the whole backlog old enough for recovery to consider it.
        db.session.execute(
            update(Event).values(next_attempt_at=Event.created_at - text("interval '5 minutes'"))
        )
        db.session.commit()
        queue, settings = get_queue(), app.config["EVENTFLOW"]

        for _ in range(5):
            assert recover(queue, settings).resent == 0
            assert _queue_length(store) == backlog == count_waiting()

        for _ in range(10):  # the queue loses ten messages
            store.rpop("huey.redis.eventflow")
        assert recover(queue, settings).resent == 10
        for _ in range(5):
            assert recover(queue, settings).resent == 0
            assert _queue_length(store) == backlog == count_waiting()


def test_recovery_leaves_alone_a_backoff_that_began_while_it_was_looking(
    client, app, auth, database_url
):
    event_id = client.post(
        "/api/v1/events", json={"type": "TEST_OK", "payload": {}}, headers=auth
    ).get_json()["eventId"]
    backoff_until = utcnow() + timedelta(hours=1)

    def a_worker_retries_it_meanwhile(conn, cursor, statement, *args):
        # Between recovery's SELECT and its UPDATE, a worker claims the event, fails, and
        # schedules its retry: commit that from another connection.
        if statement.startswith("UPDATE events SET next_attempt_at"):
            other = psycopg2.connect(database_url)
            with other, other.cursor() as cur:
                cur.execute(
                    "UPDATE events SET status = 'RETRYING', next_attempt_at = %s WHERE id = %s",
                    (backoff_until, event_id),
                )
            other.close()

    with app.app_context():
        db.session.execute(
            update(Event).values(next_attempt_at=Event.created_at - text("interval '5 minutes'"))
        )
        db.session.commit()
        sa_event.listen(db.engine, "before_cursor_execute", a_worker_retries_it_meanwhile)
        try:
            resent = touch_waiting(utcnow(), 10)
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", a_worker_retries_it_meanwhile)
        assert resent == []
        assert db.session.get(Event, uuid.UUID(event_id)).next_attempt_at == backoff_until


def test_recovery_forgets_workers_silent_for_an_hour_but_keeps_live_ones(app):
    with app.app_context():
        now = utcnow()
        for worker_id, seen in [("dead:1", now - timedelta(hours=2)), ("live:2", now)]:
            db.session.add(
                Worker(id=worker_id, hostname="h", pid=1, started_at=seen, last_seen_at=seen)
            )
        db.session.commit()
        recover(get_queue(), app.config["EVENTFLOW"])
        assert db.session.scalars(select(Worker.id)).all() == ["live:2"]


BIG_TABLE = """
    INSERT INTO events (id, user_id, type, payload, status, attempts, replayed_attempts,
                        created_at, next_attempt_at, locked_at, locked_by)
    SELECT gen_random_uuid(), CAST(:user AS uuid), 'BULK', '{}',
           CASE WHEN g % 100 = 0 THEN 'PENDING' WHEN g % 101 = 0 THEN 'PROCESSING'
                ELSE 'PROCESSED' END,
           1, 0, now() - g * interval '1 second', now() - g * interval '1 second',
           CASE WHEN g % 101 = 0 THEN now() - interval '1 hour' END,
           CASE WHEN g % 101 = 0 THEN 'dead:1' END
    FROM generate_series(1, :rows) AS g
"""


def test_claims_and_recovery_stay_index_scans_on_a_big_table(app, make_user):
    # 30,000 events, 1 % waiting and 1 % claimed by a dead worker, analyzed; then a backlog
    # of 30,000 more the statistics have not seen (as right after a burst of ingest).
    user = make_user()
    with app.app_context():
        db.session.execute(text(BIG_TABLE), {"user": str(user.id), "rows": 30000})
        db.session.execute(text("ANALYZE events"))
        db.session.execute(
            text(BIG_TABLE.replace("g % 100 = 0", "true")), {"user": str(user.id), "rows": 30000}
        )
        db.session.commit()
        backlog = db.session.scalars(
            select(Event.id).where(Event.status == "PENDING").limit(500)
        ).all()
        db.session.rollback()
    cutoff = utcnow() - timedelta(minutes=5)

    def a_worker_and_recovery():
        claims = claim_events(list(backlog), "live:1")
        complete_events([(claimed, "null") for claimed in claims])
        find_orphans(cutoff, 1000)
        count_waiting()
        touch_waiting(cutoff, 1000)

    claim, complete, orphans, waiting, touch, touched = query_plans(app, a_worker_and_recovery)
    plans = [claim, complete, orphans, waiting, touch, touched]
    assert all("Seq Scan on events" not in plan for plan in plans), plans
    # The claim goes by primary key, never through the waiting events (a backlog per claim).
    assert "events_pkey" in claim and "ix_events_waiting" not in claim, claim
    assert "events_pkey" in complete or "ix_events_status_created_at" in complete, complete
    # Recovery: orphans through the status index, lost messages through the waiting index.
    assert "ix_events_status_created_at" in orphans, orphans
    assert "ix_events_waiting_next_attempt_at" in touch, touch
