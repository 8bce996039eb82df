"""Pausing a type with real worker processes (CONTRACT §11): its events wait through recovery
runs, nothing of it moves, and after resume each runs exactly once; a type's own policy sends it
to the DLQ after its own number of attempts. One worker for the module."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from eventflow.extensions import db
from eventflow.models import AuditEntry, Event, EventAttempt
from eventflow.tasks.queue import get_queue
from tests import processes
from tests.pipeline import attempt_rows, events_by_id, ingest, read_effects, wait_terminal
from tests.processes import wait_for

PAUSED_FOR = 10  # seconds: about 20 recovery passes at FAST_PIPELINE's 0.5 s interval


@pytest.fixture(scope="module")
def module_worker(migrated, base_env, tmp_path_factory):
    """One worker (two threads) for every test here; each test's `app` empties the tables."""
    log = tmp_path_factory.mktemp("pause") / "worker.log"
    proc = processes.start_worker(base_env, log, "--workers", "2")
    yield proc
    proc.stop()


def snapshot(app, ids: list[str]) -> dict[str, tuple]:
    """What could move an event: status, attempts, due time, lock."""
    with app.app_context():
        rows = db.session.execute(
            select(
                Event.id, Event.status, Event.attempts, Event.next_attempt_at, Event.locked_at
            ).where(Event.id.in_([uuid.UUID(i) for i in ids]))
        ).all()
        return {str(row[0]): tuple(row[1:]) for row in rows}


def attempts_per_event(app, ids: list[str]) -> dict[str, int]:
    with app.app_context():
        rows = db.session.execute(
            select(EventAttempt.event_id, func.count())
            .where(EventAttempt.event_id.in_([uuid.UUID(i) for i in ids]))
            .group_by(EventAttempt.event_id)
        ).all()
        return {str(event_id): n for event_id, n in rows}


def test_a_paused_type_waits_through_recovery_runs_and_runs_exactly_once_after_resume(
    app, client, admin_auth, runner, module_worker, tmp_path
):
    # An event of a type already PROCESSING when its pause lands finishes normally.
    slow = ingest(client, admin_auth, "TEST_SLOW", {"seconds": 1.5})
    wait_for(
        lambda: events_by_id(app, [slow])[slow]["status"] == "PROCESSING",
        message="the slow event to be claimed",
    )
    for event_type in ("TEST_SLOW", "TEST_OK"):
        response = client.post(f"/api/v1/types/{event_type}/pause", headers=admin_auth)
        assert response.status_code == 200 and response.get_json()["paused"] is True

    effects = tmp_path / "effects"
    batch = [{"type": "TEST_OK", "payload": {"effects": str(effects)}}] * 500 + [
        {"type": "other.type", "payload": {"n": n}} for n in range(500)
    ]
    response = client.post("/api/v1/events/batch", json={"events": batch}, headers=admin_auth)
    assert response.status_code == 202, response.get_json()
    ids = [item["eventId"] for item in response.get_json()["items"]]
    paused, others = ids[:500], ids[500:]

    assert set(wait_terminal(app, [*others, slow], timeout=60).values()) == {"PROCESSED"}
    assert [row["outcome"] for row in attempt_rows(app, slow)] == ["succeeded"]
    before = snapshot(app, paused)
    assert {(status, attempts) for status, attempts, *_ in before.values()} == {("PENDING", 0)}
    time.sleep(PAUSED_FOR)  # a wait, not a timed assertion: ~20 recovery passes go by
    assert snapshot(app, paused) == before  # not claimed, not re-sent (due time untouched)
    assert attempts_per_event(app, paused) == {} and read_effects(effects) == {}
    with app.app_context():
        # The workers took their messages and dropped them; recovery sent none back.
        assert get_queue().messages_waiting() == 0
    state = {t["type"]: t for t in client.get("/api/v1/types", headers=admin_auth).get_json()}
    assert state["TEST_OK"]["paused"] is True and state["TEST_OK"]["counts"]["pending"] == 500

    resumed = runner.invoke(args=["types", "resume", "TEST_OK"])
    assert resumed.exit_code == 0 and "500 waiting event(s) sent" in resumed.output

    assert set(wait_terminal(app, paused, timeout=60).values()) == {"PROCESSED"}
    assert read_effects(effects) == {event_id: [1] for event_id in paused}
    assert attempts_per_event(app, paused) == {event_id: 1 for event_id in paused}
    with app.app_context():
        trail = db.session.execute(
            select(AuditEntry.action, AuditEntry.target, AuditEntry.actor)
            .where(AuditEntry.action.in_(("pause", "resume")))
            .order_by(AuditEntry.id)
        ).all()
    admin = trail[0].actor
    assert admin.startswith("user-")
    assert [tuple(row) for row in trail] == [
        ("pause", "TEST_SLOW", admin),
        ("pause", "TEST_OK", admin),
        ("resume", "TEST_OK", "command line"),
    ]


def test_a_type_with_max_attempts_2_fails_after_two_while_the_global_gives_five(
    app, client, auth, module_worker, tmp_path
):
    effects = tmp_path / "effects"
    own = ingest(client, auth, "TEST_TWO_ATTEMPTS", {"effects": str(effects)})
    default = ingest(client, auth, "TEST_ALWAYS_FAILS", {"effects": str(effects)})
    assert wait_terminal(app, [own, default], timeout=60) == {own: "FAILED", default: "FAILED"}
    assert read_effects(effects) == {own: [1, 2], default: [1, 2, 3, 4, 5]}
    assert [row["outcome"] for row in attempt_rows(app, own)] == ["retry", "failed"]
    event = client.get(f"/api/v1/events/{own}", headers=auth).get_json()
    assert event["attempts"] == 2 and event["last_error"] == "RuntimeError: attempt 2 of 2 failed"
