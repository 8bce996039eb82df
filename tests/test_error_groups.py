"""Error groups through the real API, filled by a real worker process whose handlers raise.

One worker serves the module (3 attempts per event, fast backoff); the `app` fixture empties
the database before each test.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from eventflow.extensions import db
from eventflow.models import AuditEntry, ErrorGroup, Event, Status
from tests import processes
from tests.conftest import bearer
from tests.pipeline import events_by_id, ingest, wait_terminal

MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def module_worker(migrated, base_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # A long visibility timeout: on a busy machine a slow heartbeat must not make recovery
    # presume an attempt lost (a fourth group, WorkerLost, of its own).
    env = {
        **base_env,
        "EVENTFLOW_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS": "120",
    }
    proc = processes.start_worker(env, log, "--workers", "2")
    yield proc
    proc.stop()


@pytest.fixture
def worker(app, module_worker):
    """The module's worker, on a freshly emptied database (shadows conftest's)."""
    return module_worker


def ingest_batch(client, headers: dict, events: list[tuple[str, dict]]) -> list[str]:
    body = {"events": [{"type": t, "payload": p} for t, p in events]}
    response = client.post("/api/v1/events/batch", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return [item["eventId"] for item in response.get_json()["items"]]


def groups(client, headers: dict, query: str = "") -> dict:
    response = client.get(f"/api/v1/error-groups{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def by_exception(listing: dict) -> dict[str, dict]:
    return {item["exception"]: item for item in listing["items"]}


def three_errors(n: int) -> tuple[str, dict]:
    """Event n of the three failing kinds: its message differs from every other event's."""
    kind = n % 3
    if kind == 0:
        customers = ["ACME Corp", str(uuid.uuid4()), "O'Brien & Sons"]
        return "TEST_NO_CUSTOMER", {"n": n, "customers": customers}
    if kind == 1:
        return "TEST_TIMEOUT", {"n": n}
    return "TEST_BAD_PRICE", {"n": n, "sku": uuid.uuid4().hex[:12]}


def test_three_distinct_errors_over_300_failures_make_three_groups(client, app, admin_auth, worker):
    ids = ingest_batch(client, admin_auth, [three_errors(n) for n in range(100)])
    assert set(wait_terminal(app, ids, timeout=60).values()) == {"FAILED"}
    events = events_by_id(app, ids)
    assert len({e["last_error"] for e in events.values()}) == 100  # every message differs

    listing = groups(client, admin_auth)
    assert (listing["total"], listing["page"], listing["pages"]) == (3, 1, 1)
    found = by_exception(listing)
    assert set(found) == {"LookupError", "TimeoutError", "ValueError"}
    # Every attempt failed: 100 events x 3 attempts, each kind in its own group.
    assert {e: g["count"] for e, g in found.items()} == {
        "LookupError": 34 * MAX_ATTEMPTS,
        "TimeoutError": 33 * MAX_ATTEMPTS,
        "ValueError": 33 * MAX_ATTEMPTS,
    }
    assert {e: g["failed_events"] for e, g in found.items()} == {
        "LookupError": 34,
        "TimeoutError": 33,
        "ValueError": 33,
    }
    assert found["LookupError"]["message"] == "order <n> has no customer <str>"
    assert found["TimeoutError"]["message"] == "upstream <n>.<n>.<n>.<n> timed out after <n> ms"
    assert found["ValueError"]["types"] == ["TEST_BAD_PRICE"]
    assert all(g["status"] == "open" for g in found.values())
    # Most failures in the last 24 h first.
    assert listing["items"][0]["exception"] == "LookupError"

    detail = client.get(
        f"/api/v1/error-groups/{found['ValueError']['id']}", headers=admin_auth
    ).get_json()
    assert detail["frame"] == "tests.handlers:_check_price"
    assert "Traceback (most recent call last)" in detail["sample_traceback"]
    assert detail["sample_error"].startswith("ValueError: price of sku ")
    assert len(detail["last_24h"]) == 24 and sum(detail["last_24h"]) == 33 * MAX_ATTEMPTS
    assert detail["last_24h"][-1] > 0  # this hour

    only = groups(client, admin_auth, "?type=TEST_TIMEOUT")
    assert [g["exception"] for g in only["items"]] == ["TimeoutError"]
    assert groups(client, admin_auth, "?status=resolved")["total"] == 0
    pages = [groups(client, admin_auth, f"?limit=2&page={n}")["items"] for n in (1, 2)]
    assert [len(items) for items in pages] == [2, 1]


def test_a_resolved_group_reopens_when_its_error_recurs_and_an_ignored_one_stays_ignored(
    client, app, admin_auth, worker
):
    first = ingest_batch(client, admin_auth, [three_errors(2), three_errors(1)])
    wait_terminal(app, first)
    found = by_exception(groups(client, admin_auth))
    price, timeout = found["ValueError"]["id"], found["TimeoutError"]["id"]

    for group_id, status in ((price, "resolved"), (timeout, "ignored")):
        response = client.patch(
            f"/api/v1/error-groups/{group_id}", json={"status": status}, headers=admin_auth
        )
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == status
    assert groups(client, admin_auth, "?status=RESOLVED")["items"][0]["id"] == price

    again = ingest_batch(client, admin_auth, [three_errors(5), three_errors(4)])
    wait_terminal(app, again)
    found = by_exception(groups(client, admin_auth))
    assert (found["ValueError"]["status"], found["ValueError"]["count"]) == ("open", 6)
    assert (found["TimeoutError"]["status"], found["TimeoutError"]["count"]) == ("ignored", 6)
    assert audit_trail(app) == [
        ("error_group_status", str(price), None, "resolved"),
        ("error_group_status", str(timeout), None, "ignored"),
    ]


def test_replaying_a_group_replays_exactly_its_dlq_events(
    client, app, admin_auth, worker, tmp_path
):
    flag = tmp_path / "toggle-on"
    flag.write_text("TEST_TOGGLE fails while this file exists")
    toggles = [ingest(client, admin_auth, "TEST_TOGGLE", {"fail_while": str(flag)}) for _ in "abc"]
    permanent = [ingest(client, admin_auth, "TEST_PERMANENT", {}) for _ in "ab"]
    wait_terminal(app, toggles + permanent)
    found = by_exception(groups(client, admin_auth))
    toggle_group = found["RuntimeError"]["id"]
    assert found["RuntimeError"]["failed_events"] == 3
    assert found["eventflow.tasks.registry.PermanentError"]["failed_events"] == 2
    with app.app_context():
        # An event of the group that is not in the DLQ: it failed so once, then succeeded.
        user_id = db.session.scalar(select(Event.user_id).limit(1))
        recovered = Event(
            user_id=user_id,
            type="TEST_TOGGLE",
            payload={},
            status=Status.PROCESSED.value,
            attempts=2,
            error_group_id=toggle_group,
        )
        db.session.add(recovered)
        db.session.commit()
        recovered_id = str(recovered.id)

    flag.unlink()
    response = client.post(f"/api/v1/error-groups/{toggle_group}/replay", headers=admin_auth)
    assert (response.status_code, response.get_json()) == (202, {"replayed": 3})
    wait_terminal(app, toggles)
    events = events_by_id(app, toggles + permanent + [recovered_id])
    assert [events[i]["status"] for i in toggles] == ["PROCESSED"] * 3
    assert [events[i]["status"] for i in permanent] == ["FAILED"] * 2
    assert events[recovered_id]["attempts"] == 2  # left alone
    found = by_exception(groups(client, admin_auth))
    assert found["RuntimeError"]["failed_events"] == 0
    assert found["eventflow.tasks.registry.PermanentError"]["failed_events"] == 2

    again = client.post(f"/api/v1/error-groups/{toggle_group}/replay", headers=admin_auth)
    assert again.get_json() == {"replayed": 0}
    assert audit_trail(app) == [
        ("replay_group", str(toggle_group), 3, None),
        ("replay_group", str(toggle_group), 0, None),
    ]


def audit_trail(app) -> list[tuple]:
    """(action, target, count, note) of the error-group entries, oldest first; by an admin."""
    actions = ("error_group_status", "replay_group")
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEntry).where(AuditEntry.action.in_(actions)).order_by(AuditEntry.id)
        ).all()
        assert all(e.actor.startswith("user-") and e.actor_id for e in entries)
        return [(e.action, e.target, e.count, e.note) for e in entries]


def test_a_viewer_reads_groups_but_gets_403_on_status_changes_and_replay(client, app, admin_auth):
    from eventflow import users

    with app.app_context():
        group = ErrorGroup(fingerprint="v" * 64, exception="E", message="m", frame="")
        db.session.add(group)
        users.create_user("viewer@example.com", "correct-horse", role="viewer")
        db.session.commit()
        path = f"/api/v1/error-groups/{group.id}"
    viewer = bearer(client, "viewer@example.com")
    assert [g["id"] for g in groups(client, viewer)["items"]] == [group.id]
    assert client.get(path, headers=viewer).status_code == 200
    refused = [
        client.patch(path, json={"status": "ignored"}, headers=viewer),
        client.post(f"{path}/replay", headers=viewer),
    ]
    assert [(r.status_code, r.get_json()["error"]["code"]) for r in refused] == [
        (403, "forbidden")
    ] * 2
    assert client.get(path, headers=admin_auth).get_json()["status"] == "open"
    assert audit_trail(app) == []


def test_a_worker_that_died_mid_attempt_puts_the_attempt_in_a_group_of_its_own(client, app):
    from datetime import timedelta

    from eventflow.models import utcnow
    from eventflow.tasks import transitions

    with app.app_context():
        from eventflow import users

        user = users.create_user("owner@example.com", "correct-horse")
        event = Event(user_id=user.id, type="TEST_OK", payload={}, status=Status.PENDING.value)
        db.session.add(event)
        db.session.commit()
        (claimed,) = transitions.claim_events([event.id], "dead:1")
        later = utcnow() + timedelta(hours=1)
        finish = transitions.finish_attempt
        assert transitions.release_orphan(claimed.id, 1, later, 1, finish) == "FAILED"
        group = db.session.scalars(select(ErrorGroup)).one()
        assert (group.exception, group.frame, group.count) == ("WorkerLost", "", 1)
        assert db.session.get(Event, event.id).error_group_id == group.id


def test_bad_requests_are_4xx_and_change_nothing(client, app, admin_auth, auth):
    with app.app_context():
        group = ErrorGroup(fingerprint="f" * 64, exception="E", message="m", frame="")
        db.session.add(group)
        db.session.commit()
        path = f"/api/v1/error-groups/{group.id}"
    cases = [
        ("get", "/api/v1/error-groups?status=closed", None, 400, "invalid_status"),
        ("get", "/api/v1/error-groups?limit=0", None, 400, "invalid_limit"),
        ("get", "/api/v1/error-groups?page=200&limit=100", None, 400, "page_too_deep"),
        ("get", "/api/v1/error-groups/999999", None, 404, "error_group_not_found"),
        ("get", "/api/v1/error-groups/abc", None, 404, "error_group_not_found"),
        ("get", "/api/v1/error-groups/99999999999999", None, 404, "error_group_not_found"),
        ("patch", path, {"status": "done"}, 400, "invalid_status"),
        ("patch", path, {"status": "resolved", "why": "x"}, 400, "unknown_field"),
        ("patch", path, {}, 400, "invalid_status"),
        ("patch", "/api/v1/error-groups/999999", {"status": "open"}, 404, "error_group_not_found"),
        ("post", "/api/v1/error-groups/0/replay", None, 404, "error_group_not_found"),
    ]
    for method, url, body, status, code in cases:
        response = getattr(client, method)(url, json=body, headers=admin_auth)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), url
    assert client.get(path, headers=admin_auth).get_json()["status"] == "open"

    for method, url in [("get", "/api/v1/error-groups"), ("post", f"{path}/replay")]:
        assert getattr(client, method)(url, headers=auth).status_code == 403  # a plain user
        assert getattr(client, method)(url).status_code == 401


def test_recovery_forgets_hourly_counts_older_than_a_week_and_keeps_the_totals(app):
    from datetime import timedelta

    from eventflow.models import ErrorGroupHour, utcnow
    from eventflow.tasks.recovery import forget_old_error_hours

    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    with app.app_context():
        group = ErrorGroup(fingerprint="h" * 64, exception="E", message="m", frame="", count=5)
        db.session.add(group)
        db.session.flush()
        for age, count in ((0, 1), (24 * 7 - 1, 2), (24 * 7 + 1, 2)):
            db.session.add(
                ErrorGroupHour(group_id=group.id, hour=hour - timedelta(hours=age), count=count)
            )
        db.session.commit()
        forget_old_error_hours()
        kept = db.session.scalars(select(ErrorGroupHour.count).order_by(ErrorGroupHour.hour)).all()
        assert (kept, db.session.get(ErrorGroup, group.id).count) == ([2, 1], 5)
