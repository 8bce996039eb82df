"""Replaying the DLQ: API and CLI, admins only, history kept, a fresh retry budget (CONTRACT §5)."""

from __future__ import annotations

import uuid

from tests.pipeline import (
    api_get,
    attempt_rows,
    ingest,
    read_effects,
    statuses,
    wait_terminal,
)
from tests.processes import flask_cli, wait_for

MAX_ATTEMPTS = "2"


def _post(client, headers: dict, path: str, **kwargs):
    return client.post(f"/api/v1{path}", headers=headers, **kwargs)


def _toggled(client, auth, app, tmp_path, count: int = 1, event_type: str = "TEST_TOGGLE"):
    """Ingest events whose handler fails while a toggle file exists; wait until they are FAILED."""
    toggle = tmp_path / "toggle"
    toggle.touch()
    effects = tmp_path / "effects"
    payload = {"effects": str(effects), "fail_while": str(toggle)}
    ids = [ingest(client, auth, event_type, payload) for _ in range(count)]
    assert set(wait_terminal(app, ids).values()) == {"FAILED"}
    return ids, toggle, effects


def test_replaying_one_event_via_api_brings_it_to_processed_and_keeps_its_history(
    client, auth, admin_auth, app, start_worker, tmp_path
):
    start_worker("--workers", "2", EVENTFLOW_MAX_ATTEMPTS=MAX_ATTEMPTS)
    [event_id], toggle, effects = _toggled(client, auth, app, tmp_path)
    toggle.unlink()

    response = _post(client, admin_auth, f"/events/{event_id}/replay")
    assert response.status_code == 202
    assert response.get_json() == {"eventId": event_id, "status": "queued"}

    assert wait_terminal(app, [event_id]) == {event_id: "PROCESSED"}
    # The handler saw attempts 1, 2 before the replay and attempt 1 of a fresh run after it.
    assert read_effects(effects) == {event_id: [1, 2, 1]}
    rows = attempt_rows(app, event_id)
    assert [(r["number"], r["outcome"]) for r in rows] == [
        (1, "retry"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert rows[1]["error"] == "RuntimeError: toggle is on"
    body = api_get(client, auth, f"/events/{event_id}")
    assert (body["status"], body["attempts"], body["result"]) == ("PROCESSED", 3, {"ok": True})


def test_a_replayed_event_gets_a_fresh_retry_budget(
    client, auth, admin_auth, app, start_worker, tmp_path
):
    start_worker("--workers", "2", EVENTFLOW_MAX_ATTEMPTS=MAX_ATTEMPTS)
    [event_id], _toggle, effects = _toggled(client, auth, app, tmp_path)

    assert _post(client, admin_auth, f"/events/{event_id}/replay").status_code == 202
    # Still failing: it retries again (not straight back to the DLQ) and is FAILED once more.
    wait_terminal(app, [event_id])
    assert statuses(app, [event_id]) == {event_id: "FAILED"}
    assert read_effects(effects) == {event_id: [1, 2, 1, 2]}
    outcomes = [r["outcome"] for r in attempt_rows(app, event_id)]
    assert outcomes == ["retry", "failed", "retry", "failed"]
    body = api_get(client, auth, f"/events/{event_id}")
    assert (body["attempts"], body["last_error"]) == (4, "RuntimeError: toggle is on")


def test_dlq_lists_failed_events_paginated_and_bulk_replay_by_type_then_all(
    client, auth, admin_auth, app, start_worker, tmp_path
):
    start_worker("--workers", "2", EVENTFLOW_MAX_ATTEMPTS=MAX_ATTEMPTS)
    toggled, toggle, effects = _toggled(client, auth, app, tmp_path, count=3)
    orders = [ingest(client, auth, "ORDER_CREATED", {"items": []}) for _ in range(2)]
    assert set(wait_terminal(app, orders).values()) == {"FAILED"}

    page = api_get(client, admin_auth, "/dlq?limit=2")
    assert (page["total"], page["pages"], page["limit"], len(page["items"])) == (5, 3, 2, 2)
    assert {item["status"] for item in page["items"]} == {"FAILED"}
    last = api_get(client, admin_auth, "/dlq?limit=2&page=3")
    assert len(last["items"]) == 1
    only_orders = api_get(client, admin_auth, "/dlq?type=ORDER_CREATED")
    assert sorted(item["id"] for item in only_orders["items"]) == sorted(orders)

    toggle.unlink()
    response = _post(client, admin_auth, "/dlq/replay", json={"type": "TEST_TOGGLE"})
    assert (response.status_code, response.get_json()) == (202, {"replayed": 3})
    assert set(wait_terminal(app, toggled).values()) == {"PROCESSED"}
    assert read_effects(effects) == {i: [1, 2, 1] for i in toggled}
    assert set(statuses(app, orders).values()) == {"FAILED"}

    # Replaying everything left: the orders fail again at once (a permanent error).
    response = _post(client, admin_auth, "/dlq/replay")
    assert (response.status_code, response.get_json()) == (202, {"replayed": 2})
    for order in orders:
        rows = wait_for_attempts(app, order, 2)
        assert [r["outcome"] for r in rows] == ["failed", "failed"]
    assert api_get(client, admin_auth, "/dlq")["total"] == 2


def wait_for_attempts(app, event_id: str, count: int) -> list[dict]:
    """Wait until the event has `count` finished attempts and is terminal again."""

    def finished():
        rows = attempt_rows(app, event_id)
        done = len(rows) == count and all(r["finished_at"] for r in rows)
        return rows if done and statuses(app, [event_id])[event_id] == "FAILED" else None

    return wait_for(finished, message=f"{count} attempts of {event_id}")


def test_non_admins_get_403_and_anonymous_401_on_replay_and_dlq_routes(client, auth):
    event_id = str(uuid.uuid4())
    routes = [
        ("post", f"/api/v1/events/{event_id}/replay", None),
        ("get", "/api/v1/dlq", None),
        ("post", "/api/v1/dlq/replay", {}),
    ]
    for method, path, body in routes:
        response = getattr(client, method)(path, json=body, headers=auth)
        assert response.status_code == 403, path
        assert response.get_json()["error"]["code"] == "forbidden"
        response = getattr(client, method)(path, json=body)
        assert response.status_code == 401, path


def test_replay_of_an_event_not_in_the_dlq_is_409_and_of_an_unknown_one_404(
    client, auth, admin_auth
):
    created = client.post(
        "/api/v1/events", json={"type": "TEST_OK", "payload": {}}, headers=auth
    ).get_json()["eventId"]
    response = client.post(f"/api/v1/events/{created}/replay", headers=admin_auth)
    assert (response.status_code, response.get_json()["error"]["code"]) == (409, "not_in_dlq")
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        response = client.post(f"/api/v1/events/{unknown}/replay", headers=admin_auth)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "event_not_found"


def test_bulk_replay_rejects_bad_bodies(client, admin_auth):
    for body, code in [
        ({"type": 5}, "invalid_type"),
        ({"type": "has space"}, "invalid_type"),
        ({"kind": "X"}, "unknown_field"),
        ([], "invalid_body"),
    ]:
        response = client.post("/api/v1/dlq/replay", json=body, headers=admin_auth)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == code
    response = client.post("/api/v1/dlq/replay", json={}, headers=admin_auth)
    assert (response.status_code, response.get_json()) == (202, {"replayed": 0})


def _flask_dlq(base_env, *args: str) -> str:
    """Run `flask --app wsgi dlq ...` as a real command; return its output."""
    return flask_cli(base_env, "dlq", *args, check=True).stdout


def _dlq(runner, *args: str) -> str:
    """The same command through the app's CLI runner (no process start-up)."""
    result = runner.invoke(args=["dlq", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_lists_the_dlq_and_replays_one_event_then_a_type(
    client, auth, app, runner, start_worker, base_env, tmp_path
):
    start_worker("--workers", "2", EVENTFLOW_MAX_ATTEMPTS=MAX_ATTEMPTS)
    ids, toggle, effects = _toggled(client, auth, app, tmp_path, count=3)
    listing = _flask_dlq(base_env, "list")
    assert "3 event(s) in the DLQ" in listing
    assert all(i in listing for i in ids)
    assert "RuntimeError: toggle is on" in listing
    limited = _dlq(runner, "list", "--limit", "1").splitlines()
    assert limited[0] == "3 event(s) in the DLQ" and len(limited) == 2
    toggle.unlink()

    first, rest = ids[0], ids[1:]
    assert f"replayed {first}" in _flask_dlq(base_env, "replay", first)
    assert wait_terminal(app, [first]) == {first: "PROCESSED"}
    assert set(statuses(app, rest).values()) == {"FAILED"}

    assert "replayed 2 event(s)" in _dlq(runner, "replay", "--type", "TEST_TOGGLE")
    assert set(wait_terminal(app, rest).values()) == {"PROCESSED"}
    assert read_effects(effects) == {i: [1, 2, 1] for i in ids}
    assert "0 event(s) in the DLQ" in _dlq(runner, "list")
