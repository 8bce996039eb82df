"""Retries with backoff, the DLQ, and one event_attempts row per attempt (CONTRACT §4, §6)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from statistics import mean

import pytest
from sqlalchemy import update

from eventflow.extensions import db
from eventflow.models import Event, utcnow
from eventflow.tasks import processing, transitions
from eventflow.tasks.processing import BATCH_SECONDS, backoff_delay
from eventflow.tasks.queue import get_queue, processor_of
from tests.pipeline import (
    PRELOAD,
    api_get,
    attempt_rows,
    events_by_id,
    ingest,
    read_effects,
    wait_terminal,
)


@pytest.fixture
def live_server(app, start_server):
    """gunicorn on the test database and Redis, app preloaded (see tests.pipeline.PRELOAD)."""
    return start_server(PRELOAD)


def test_backoff_delay_is_full_jitter_below_the_capped_exponential():
    for attempt, cap in [(1, 1), (2, 2), (3, 4), (5, 16), (9, 256), (10, 300), (100, 300)]:
        samples = [backoff_delay(attempt, 1.0, 300.0) for _ in range(2000)]
        assert all(0 <= s <= cap for s in samples), attempt
        # Full jitter: the whole range [0, cap] is used, evenly (mean near cap / 2).
        assert min(samples) < 0.05 * cap and max(samples) > 0.95 * cap, attempt
        assert 0.4 * cap < mean(samples) < 0.6 * cap, attempt
    assert backoff_delay(4, 0.0, 300.0) == 0
    assert all(backoff_delay(3, 0.5, 1.0) <= 1.0 for _ in range(200))


def _set_due(app, event_id: str, when) -> None:
    with app.app_context():
        db.session.execute(
            update(Event).where(Event.id == uuid.UUID(event_id)).values(next_attempt_at=when)
        )
        db.session.commit()


def _process(app, event_id: str) -> None:
    """Run the worker's task body in this process, as a queue message would."""
    with app.app_context():
        processor_of(app).process(event_id)


def test_each_attempt_updates_attempts_last_error_and_its_row(client, app, auth, tmp_path):
    effects = tmp_path / "effects"
    response = client.post(
        "/api/v1/events",
        json={"type": "TEST_FLAKY", "payload": {"effects": str(effects)}},
        headers=auth,
    )
    event_id = response.get_json()["eventId"]
    settings = app.config["EVENTFLOW"]

    before = utcnow()
    _process(app, event_id)
    body = client.get(f"/api/v1/events/{event_id}", headers=auth).get_json()
    assert body["status"] == "RETRYING"
    assert body["attempts"] == 1
    assert body["last_error"] == "RuntimeError: flaky failure on attempt 1"
    [row] = attempt_rows(app, event_id)
    assert row["number"] == 1 and row["outcome"] == "retry"
    assert row["error"] == "RuntimeError: flaky failure on attempt 1"
    assert "Traceback" in row["traceback"] and "tests/handlers.py" in row["traceback"]
    assert before <= row["started_at"] <= row["finished_at"]
    with app.app_context():
        due = db.session.get(Event, uuid.UUID(event_id)).next_attempt_at
    assert (
        row["finished_at"]
        <= due
        <= row["finished_at"] + timedelta(seconds=settings.retry_base_seconds)
    )

    # A message that arrives before the backoff is over does nothing.
    _set_due(app, event_id, utcnow() + timedelta(hours=1))
    _process(app, event_id)
    assert len(attempt_rows(app, event_id)) == 1

    _set_due(app, event_id, utcnow())
    _process(app, event_id)
    body = client.get(f"/api/v1/events/{event_id}", headers=auth).get_json()
    assert (body["status"], body["attempts"]) == ("RETRYING", 2)
    assert body["last_error"] == "RuntimeError: flaky failure on attempt 2"

    _set_due(app, event_id, utcnow())
    _process(app, event_id)
    body = client.get(f"/api/v1/events/{event_id}", headers=auth).get_json()
    assert (body["status"], body["attempts"]) == ("PROCESSED", 3)
    assert body["result"] == {"succeeded_on": 3}
    assert body["processed_at"] is not None
    assert [r["outcome"] for r in attempt_rows(app, event_id)] == ["retry", "retry", "succeeded"]

    # A duplicate message for a processed event does nothing either.
    _process(app, event_id)
    assert read_effects(effects) == {event_id: [1, 2, 3]}
    assert len(attempt_rows(app, event_id)) == 3


def test_a_handler_that_fails_twice_succeeds_on_attempt_3(
    live_server, auth, app, start_worker, tmp_path
):
    start_worker("--workers", "2", "--processes")
    effects = tmp_path / "effects"
    ids = [ingest(live_server, auth, "TEST_FLAKY", {"effects": str(effects)}) for _ in range(8)]

    assert set(wait_terminal(app, ids).values()) == {"PROCESSED"}
    assert read_effects(effects) == {i: [1, 2, 3] for i in ids}
    for event_id in ids:
        rows = attempt_rows(app, event_id)
        assert [r["number"] for r in rows] == [1, 2, 3]
        assert [r["outcome"] for r in rows] == ["retry", "retry", "succeeded"]
        assert [r["error"] for r in rows] == [
            "RuntimeError: flaky failure on attempt 1",
            "RuntimeError: flaky failure on attempt 2",
            None,
        ]
        assert all("RuntimeError" in r["traceback"] for r in rows[:2])
        assert rows[2]["traceback"] is None
        for earlier, later in zip(rows, rows[1:], strict=False):
            assert earlier["started_at"] <= earlier["finished_at"] <= later["started_at"]
        body = api_get(live_server, auth, f"/events/{event_id}")
        assert body["status"] == "PROCESSED"
        assert body["attempts"] == 3
        assert body["result"] == {"succeeded_on": 3}


def _worker_has_moved_on(client, auth, app, effects) -> None:
    """Process one more event, so anything still due for the earlier ones would have run."""
    sentinel = ingest(client, auth, "TEST_OK", {"effects": str(effects)})
    assert wait_terminal(app, [sentinel]) == {sentinel: "PROCESSED"}


def test_a_permanent_error_lands_in_the_dlq_after_one_attempt(
    client, auth, admin_auth, app, worker, tmp_path
):
    effects = tmp_path / "effects"
    ids = [ingest(client, auth, "TEST_PERMANENT", {"effects": str(effects)}) for _ in range(3)]

    assert set(wait_terminal(app, ids).values()) == {"FAILED"}
    _worker_has_moved_on(client, auth, app, tmp_path / "sentinel")
    assert read_effects(effects) == {i: [1] for i in ids}
    for event_id in ids:
        [row] = attempt_rows(app, event_id)
        assert row["outcome"] == "failed"
        assert row["error"] == "PermanentError: cannot ever succeed"
        assert "PermanentError" in row["traceback"]
        body = api_get(client, auth, f"/events/{event_id}")
        assert (body["status"], body["attempts"]) == ("FAILED", 1)
        assert body["last_error"] == "PermanentError: cannot ever succeed"
    dlq = api_get(client, admin_auth, "/dlq")
    assert sorted(item["id"] for item in dlq["items"]) == sorted(ids)


def test_exhausted_retries_land_in_the_dlq_after_max_attempts(
    client, auth, app, start_worker, tmp_path
):
    start_worker("--workers", "2", EVENTFLOW_MAX_ATTEMPTS="4")
    effects = tmp_path / "effects"
    ids = [ingest(client, auth, "TEST_ALWAYS_FAILS", {"effects": str(effects)}) for _ in range(4)]

    assert set(wait_terminal(app, ids).values()) == {"FAILED"}
    _worker_has_moved_on(client, auth, app, tmp_path / "sentinel")
    assert read_effects(effects) == {i: [1, 2, 3, 4] for i in ids}
    for event_id, event in events_by_id(app, ids).items():
        assert event["attempts"] == 4
        assert event["last_error"] == "ValueError: this handler always fails"
        rows = attempt_rows(app, event_id)
        assert [r["outcome"] for r in rows] == ["retry", "retry", "retry", "failed"]
        assert all(r["error"] == "ValueError: this handler always fails" for r in rows)
        assert all(r["finished_at"] is not None for r in rows)


def test_one_task_takes_a_batch_and_records_each_outcome_on_its_own_event(
    client, app, auth, tmp_path, monkeypatch
):
    # Fast handlers, and all the time in the world: one task takes every message.
    monkeypatch.setattr(processor_of(app).sizer, "seconds_per_event", 1e-6)
    monkeypatch.setattr(processing, "BATCH_SECONDS", 60.0)
    effects = {"effects": str(tmp_path / "effects")}
    ok = [ingest(client, auth, "TEST_OK", effects) for _ in range(3)]
    flaky = ingest(client, auth, "TEST_FLAKY", effects)
    permanent = ingest(client, auth, "TEST_PERMANENT", effects)
    no_handler = ingest(client, auth, "NO_HANDLER_FOR_THIS", {})
    with app.app_context():
        queue = get_queue()
        queue.enqueue_later(uuid.UUID(ok[0]), 60)  # a wake-up that is not due yet
        assert queue.huey.pending_count() == 7
        processor_of(app).process(ok[0])
        # Every message was taken; the early wake-up went to the schedule, and the flaky
        # event's own wake-up is the one message queued.
        assert (queue.huey.pending_count(), queue.huey.scheduled_count()) == (1, 1)

    events = events_by_id(app, [*ok, flaky, permanent, no_handler])
    assert {i: events[i]["status"] for i in ok} == {i: "PROCESSED" for i in ok}
    assert all(events[i]["result"] == {"attempt": 1} for i in ok)
    assert (events[no_handler]["status"], events[no_handler]["result"]) == ("PROCESSED", None)
    assert (events[flaky]["status"], events[flaky]["attempts"]) == ("RETRYING", 1)
    assert (events[permanent]["status"], events[permanent]["attempts"]) == ("FAILED", 1)
    outcomes = {i: [r["outcome"] for r in attempt_rows(app, i)] for i in events}
    assert outcomes == {
        **{i: ["succeeded"] for i in ok},
        no_handler: ["succeeded"],
        flaky: ["retry"],
        permanent: ["failed"],
    }
    assert read_effects(tmp_path / "effects") == {i: [1] for i in [*ok, flaky, permanent]}


def test_a_batch_slower_than_expected_gives_back_the_events_it_has_not_started(
    client, app, auth, tmp_path, monkeypatch
):
    sizer = processor_of(app).sizer
    monkeypatch.setattr(sizer, "seconds_per_event", 1e-6)
    effects = tmp_path / "effects"
    # Each handler alone outlasts the batch's time budget.
    payload = {"effects": str(effects), "seconds": BATCH_SECONDS * 4}
    ids = [ingest(client, auth, "TEST_SLOW", payload) for _ in range(5)]
    with app.app_context():
        queue = get_queue()
        processor_of(app).process(ids[0])
        assert queue.huey.pending_count() == 4  # given back to the queue

    events = events_by_id(app, ids)
    assert events[ids[0]]["status"] == "PROCESSED"
    # The others are as if never claimed: waiting, no attempt counted, no attempt row.
    assert [(events[i]["status"], events[i]["attempts"]) for i in ids[1:]] == [("PENDING", 0)] * 4
    assert [len(attempt_rows(app, i)) for i in ids] == [1, 0, 0, 0, 0]
    assert read_effects(effects) == {ids[0]: [1]}
    assert sizer.size() == 1  # and it has learned to take one at a time


def test_a_success_is_recorded_only_on_a_claim_still_held(client, app, auth):
    ids = [ingest(client, auth, "TEST_OK", {}) for _ in range(3)]
    results = ['{"note": "a \\"quoted\\" \\u00e9 text"}', "null", "[1, 2.5, true]"]
    with app.app_context():
        claims = transitions.claim_events([uuid.UUID(i) for i in reversed(ids)], "w:1")
        assert [str(c.id) for c in claims] == ids[::-1]  # in the order asked
        claims.reverse()
        # Meanwhile recovery takes the second one back (its worker looked dead).
        later = utcnow() + timedelta(hours=1)
        finish = transitions.finish_attempt
        assert transitions.release_orphan(claims[1].id, 1, later, 5, finish) == "RETRYING"
        recorded = transitions.complete_events(list(zip(claims, results, strict=True)))
    assert set(recorded) == {claims[0].id, claims[2].id}
    events = events_by_id(app, ids)
    assert [events[i]["status"] for i in ids] == ["PROCESSED", "RETRYING", "PROCESSED"]
    assert events[ids[0]]["result"] == {"note": 'a "quoted" \u00e9 text'}
    assert events[ids[1]]["result"] is None
    assert events[ids[2]]["result"] == [1, 2.5, True]
    assert [[r["outcome"] for r in attempt_rows(app, i)] for i in ids] == [
        ["succeeded"],
        ["lost"],
        ["succeeded"],
    ]
