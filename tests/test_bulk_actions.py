"""Bulk actions: replay or discard what a filter matches, run by real workers (CONTRACT §10).

The FAILED events are written with SQL (thousands in a fraction of a second); everything else
goes through the API and real worker processes on PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import func, select, text

from eventflow.extensions import db
from eventflow.models import AuditEntry, BulkActionItem, Event
from tests import processes
from tests.conftest import bearer
from tests.processes import wait_for

BIG = 20_000
# A type without a handler: a replayed event is processed at once, with result null.
NO_HANDLER = "BULK_TEST"


def add_failed(app, user_id, count: int, event_type: str = NO_HANDLER, **payload) -> None:
    """`count` FAILED events of the user, newest last, in one INSERT."""
    with app.app_context():
        db.session.execute(
            text(
                """
                INSERT INTO events (id, user_id, type, payload, status, attempts,
                                    replayed_attempts, last_error, created_at)
                SELECT gen_random_uuid(), :user_id, :type, CAST(:payload AS jsonb), 'FAILED', 1,
                       0, 'RuntimeError: boom', now() - make_interval(secs => :n - g)
                FROM generate_series(1, :n) AS g
                """
            ),
            {
                "user_id": user_id,
                "type": event_type,
                "payload": json.dumps(payload),
                "n": count,
            },
        )
        db.session.commit()


def counts(app, **where: str) -> dict[str, int]:
    """Events per status (of one type, if given)."""
    with app.app_context():
        query = select(Event.status, func.count()).group_by(Event.status)
        if "type" in where:
            query = query.where(Event.type == where["type"])
        rows = db.session.execute(query).all()
        db.session.rollback()
        return {status: n for status, n in rows}


def audit_rows(app, action: str) -> list[AuditEntry]:
    with app.app_context():
        rows = list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)))
        db.session.expunge_all()
        return rows


def items_left(app) -> int:
    with app.app_context():
        left = db.session.scalar(select(func.count()).select_from(BulkActionItem))
        db.session.rollback()
        return left or 0


def post(client, headers, path: str, body=None):
    return client.post(f"/api/v1{path}", json=body, headers=headers)


def bulk(client, headers, action: str = "replay", **body):
    response = post(client, headers, "/bulk-actions", {"action": action, **body})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def read(client, headers, action_id: str) -> dict:
    response = client.get(f"/api/v1/bulk-actions/{action_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def wait_finished(client, headers, action_id: str, timeout: float = 60) -> dict:
    def finished():
        state = read(client, headers, action_id)
        return state if state["status"] != "running" else None

    return wait_for(finished, timeout=timeout, message=f"bulk action {action_id} to finish")


@pytest.fixture(scope="module")
def bulk_worker(migrated, base_env, tmp_path_factory):
    """One worker for the module's tests that kill none (the `app` fixture empties its data)."""
    log = tmp_path_factory.mktemp("bulk-worker") / "worker.log"
    proc = processes.start_worker(base_env, log, "--workers", "2")
    yield proc
    proc.stop()


@pytest.fixture
def admin(make_user):
    return make_user(admin=True)


@pytest.fixture
def admin_headers(client, admin):
    return bearer(client, admin.email)


# --- counting and what is touched ------------------------------------------------------------


def test_a_dry_run_counts_exactly_what_the_real_run_then_touches(
    app, client, admin, admin_headers, bulk_worker
):
    add_failed(app, admin.id, 30, "ORDER_SYNC", customer="acme")
    add_failed(app, admin.id, 10, "ORDER_SYNC", customer="globex")
    add_failed(app, admin.id, 7, "OTHER")
    body = {"action": "replay", "filter": {"type": "ORDER_SYNC", "payload": {"customer": "acme"}}}

    dry = post(client, admin_headers, "/bulk-actions", {**body, "dry_run": True})
    assert (dry.status_code, dry.get_json()) == (200, {"matched": 30})
    also_failed = {**body["filter"], "status": "failed"}
    dry = post(
        client, admin_headers, "/bulk-actions", {**body, "filter": also_failed, "dry_run": True}
    )
    assert (dry.status_code, dry.get_json()) == (200, {"matched": 30})
    # A type alone (or nothing) is answered from the counters, exactly as a count would.
    by_type = {"action": "replay", "filter": {"type": "ORDER_SYNC"}, "dry_run": True}
    assert post(client, admin_headers, "/bulk-actions", by_type).get_json() == {"matched": 40}
    assert counts(app) == {"FAILED": 47}  # a dry run changes nothing

    started = bulk(client, admin_headers, **body, note="acme fixed their endpoint")
    assert (started["matched"], started["status"]) == (30, "running")
    done = wait_finished(client, admin_headers, started["id"])
    assert (done["status"], done["matched"], done["done"]) == ("completed", 30, 30)
    assert done["filter"] == body["filter"] and done["note"] == "acme fixed their endpoint"
    assert done["created_by"] == str(admin.id) and done["finished_at"]
    # Exactly the 30 left the DLQ; the others are still FAILED.
    assert wait_for(lambda: counts(app).get("PROCESSED") == 30 and counts(app))["FAILED"] == 17
    with app.app_context():
        acme_failed = db.session.scalar(
            select(func.count()).where(
                Event.status == "FAILED", Event.payload["customer"].as_string() == "acme"
            )
        )
    assert acme_failed == 0
    assert items_left(app) == 0


def test_discard_moves_failed_events_to_discarded_out_of_the_dlq_for_good(
    app, client, admin, admin_headers, bulk_worker
):
    add_failed(app, admin.id, 12, "SPAM")
    add_failed(app, admin.id, 3, "KEEP")
    started = bulk(client, admin_headers, "discard", filter={"type": "SPAM"})
    assert wait_finished(client, admin_headers, started["id"])["done"] == 12

    assert counts(app) == {"DISCARDED": 12, "FAILED": 3}
    dlq = client.get("/api/v1/dlq", headers=admin_headers).get_json()
    assert {item["type"] for item in dlq["items"]} == {"KEEP"} and dlq["total"] == 3
    discarded = client.get("/api/v1/events?status=discarded", headers=admin_headers).get_json()
    assert discarded["total"] == 12
    # Replay leaves discarded events alone: one by one, the whole DLQ, or in bulk.
    one = discarded["items"][0]["id"]
    assert post(client, admin_headers, f"/events/{one}/replay").status_code == 409
    assert post(client, admin_headers, "/dlq/replay").get_json() == {"replayed": 3}
    again = post(client, admin_headers, "/bulk-actions", {"action": "replay", "dry_run": True})
    assert again.get_json() == {"matched": 0}
    assert counts(app, type="SPAM") == {"DISCARDED": 12}


def test_bulk_action_requests_are_checked_and_bad_ones_change_nothing(
    app, client, admin, admin_headers
):
    add_failed(app, admin.id, 2)
    for body, code in [
        ({"action": "delete"}, "invalid_action"),
        ({"action": "replay", "filter": {"status": "PROCESSED"}}, "invalid_status"),
        ({"action": "replay", "filter": {"colour": "red"}}, "unknown_field"),
        ({"action": "replay", "filter": {"created_after": "yesterday"}}, "invalid_created_after"),
        ({"action": "replay", "filter": {"payload": {"a..b": 1}}}, "invalid_payload_filter"),
        ({"action": "replay", "dry_run": "yes"}, "invalid_dry_run"),
        ([], "invalid_body"),
    ]:
        response = post(client, admin_headers, "/bulk-actions", body)
        assert response.status_code == 400, (body, response.get_json())
        assert response.get_json()["error"]["code"] == code, body
    missing = client.get(f"/api/v1/bulk-actions/{uuid.uuid4()}", headers=admin_headers)
    assert (missing.status_code, missing.get_json()["error"]["code"]) == (
        404,
        "bulk_action_not_found",
    )
    assert client.get("/api/v1/bulk-actions/nope", headers=admin_headers).status_code == 404
    assert counts(app) == {"FAILED": 2}
    assert client.get("/api/v1/bulk-actions", headers=admin_headers).get_json()["total"] == 0
    assert audit_rows(app, "bulk_replay") == []


def test_a_viewer_sees_bulk_actions_but_gets_403_on_each_action_and_each_is_audited_once(
    app, client, admin, admin_headers, make_user, bulk_worker
):
    viewer = make_user()
    with app.app_context():
        db.session.execute(
            text("UPDATE users SET role = 'viewer' WHERE id = :id"), {"id": viewer.id}
        )
        db.session.commit()
    viewer_headers = bearer(client, viewer.email)
    add_failed(app, admin.id, 5, "A")
    add_failed(app, admin.id, 4, "B")
    replayed = bulk(client, admin_headers, filter={"type": "A"})
    discarded = bulk(client, admin_headers, "discard", filter={"type": "B"}, note="junk")
    wait_finished(client, admin_headers, replayed["id"])
    wait_finished(client, admin_headers, discarded["id"])

    for path, body in [
        ("/bulk-actions", {"action": "replay"}),
        ("/bulk-actions", {"action": "discard", "dry_run": True}),
        (f"/bulk-actions/{replayed['id']}/cancel", None),
    ]:
        response = post(client, viewer_headers, path, body)
        assert (response.status_code, response.get_json()["error"]["code"]) == (403, "forbidden")
    listed = client.get("/api/v1/bulk-actions", headers=viewer_headers).get_json()
    assert [item["id"] for item in listed["items"]] == [discarded["id"], replayed["id"]]
    assert read(client, viewer_headers, replayed["id"])["status"] == "completed"

    [replay_row] = audit_rows(app, "bulk_replay")
    [discard_row] = audit_rows(app, "bulk_discard")
    assert (replay_row.target, replay_row.count, replay_row.filter) == (
        replayed["id"],
        5,
        {"type": "A"},
    )
    assert (discard_row.target, discard_row.count, discard_row.note) == (discarded["id"], 4, "junk")
    assert replay_row.actor_id == discard_row.actor_id == admin.id


# --- 20,000 events, real workers ---------------------------------------------------------------


def test_a_bulk_replay_of_20000_events_completes_while_ingest_goes_on(
    app, client, admin, admin_headers, bulk_worker
):
    add_failed(app, admin.id, BIG)
    ingested: list[str] = []
    stop = threading.Event()

    def keep_ingesting() -> None:
        with app.test_client() as other:
            while not stop.is_set():
                response = other.post(
                    "/api/v1/events", json={"type": "LIVE", "payload": {}}, headers=admin_headers
                )
                assert response.status_code == 202
                ingested.append(response.get_json()["eventId"])

    ingest = threading.Thread(target=keep_ingesting)
    ingest.start()
    try:
        wait_for(lambda: ingested, message="ingest to be under way")
        started = bulk(client, admin_headers)
        assert started["matched"] == BIG
        ingested_before = len(ingested)
        done = wait_finished(client, admin_headers, started["id"])
        ingested_during = len(ingested) - ingested_before
    finally:
        stop.set()
        ingest.join()
    assert (done["status"], done["done"]) == ("completed", BIG)
    assert ingested_during > 0, "ingest went on during the run"
    # All 20,000 left the DLQ; none of the events ingested meanwhile joined the set.
    status = counts(app, type=NO_HANDLER)
    assert "FAILED" not in status and sum(status.values()) == BIG
    assert items_left(app) == 0
    assert audit_rows(app, "bulk_replay")[0].count == BIG


def test_a_bulk_replay_cancelled_half_way_leaves_the_rest_failed(
    app, client, admin, admin_headers, start_worker
):
    add_failed(app, admin.id, BIG)
    # Created before any worker runs, so the cancel comes early in the run.
    started = bulk(client, admin_headers)
    start_worker("--workers", "2")
    wait_for(lambda: read(client, admin_headers, started["id"])["done"] > 0, interval=0.02)

    response = post(client, admin_headers, f"/bulk-actions/{started['id']}/cancel")
    assert response.status_code == 200, response.get_json()
    cancelled = response.get_json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert 0 < cancelled["done"] < BIG
    # The replayed events get processed; then nothing more has moved: `done` was final.
    wait_for(lambda: counts(app).get("PROCESSED") == cancelled["done"], timeout=60)
    assert counts(app) == {"PROCESSED": cancelled["done"], "FAILED": BIG - cancelled["done"]}
    assert read(client, admin_headers, started["id"]) == cancelled
    assert items_left(app) == 0
    again = post(client, admin_headers, f"/bulk-actions/{started['id']}/cancel")
    assert (again.status_code, again.get_json()["error"]["code"]) == (409, "not_running")
    [row] = audit_rows(app, "bulk_cancel")
    assert (row.target, row.count, row.actor_id) == (
        started["id"],
        BIG - cancelled["done"],
        admin.id,
    )


def test_a_bulk_replay_survives_its_worker_being_killed_and_replays_each_event_once(
    app, client, admin, admin_headers, start_worker
):
    add_failed(app, admin.id, BIG)
    started = bulk(client, admin_headers)
    doomed = start_worker("--workers", "1")
    wait_for(lambda: read(client, admin_headers, started["id"])["done"] > 0, interval=0.02)
    doomed.kill()  # kill -9: mid-batch or between batches, its lease is left to lapse
    left_at = read(client, admin_headers, started["id"])
    assert left_at["status"] == "running" and left_at["done"] < BIG

    start_worker("--workers", "2")  # recovery re-sends the action once the lease lapses
    done = wait_finished(client, admin_headers, started["id"], timeout=90)
    assert (done["status"], done["matched"], done["done"]) == ("completed", BIG, BIG)
    assert items_left(app) == 0
    # Each event was moved once: one replay each (replayed_attempts set from attempts = 1),
    # and none is FAILED any more.
    with app.app_context():
        replays = db.session.execute(
            select(Event.replayed_attempts, func.count()).group_by(Event.replayed_attempts)
        ).all()
    assert dict(replays) == {1: BIG}
    assert "FAILED" not in counts(app)
