"""The whole path a client walks: register, login, POST an event, GET it PROCESSED."""

import requests

from tests.processes import flask_cli, wait_for


def _walk(base: str, event_type: str, payload: dict) -> dict:
    email = f"walker-{event_type.lower()}@example.com"
    assert (
        requests.post(
            f"{base}/api/v1/auth/register",
            json={"email": email, "password": "pass-word"},
            timeout=10,
        ).status_code
        == 201
    )
    token = requests.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": "pass-word"}, timeout=10
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    accepted = requests.post(
        f"{base}/api/v1/events",
        json={"type": event_type, "payload": payload},
        headers=headers,
        timeout=10,
    )
    assert accepted.status_code == 202
    url = f"{base}/api/v1/events/{accepted.json()['eventId']}"

    def processed():
        body = requests.get(url, headers=headers, timeout=10).json()
        return body if body["status"] == "PROCESSED" else None

    return wait_for(processed, timeout=20, message=f"{event_type} to be PROCESSED")


def test_order_created_is_processed_with_its_total(live_server, worker):
    body = _walk(
        live_server,
        "ORDER_CREATED",
        {"items": [{"price": 19.99, "qty": 2}, {"price": 5, "qty": 1}]},
    )
    assert body["result"]["total"] == 44.98
    assert body["attempts"] == 1
    assert body["processed_at"] >= body["created_at"]


def test_handlers_load_from_eventflow_handlers(live_server, worker):
    body = _walk(live_server, "TEST_OK", {})
    assert body["result"] == {"attempt": 1}


def test_event_type_without_handler_is_processed_with_null_result(live_server, worker):
    body = _walk(live_server, "NO_HANDLER_FOR_THIS", {"x": 1})
    assert body["result"] is None


def test_order_without_items_goes_to_the_dlq_at_once(live_server, worker, app):
    from eventflow.models import Event

    response = requests.post(
        f"{live_server}/api/v1/auth/register",
        json={"email": "o@example.com", "password": "pass-word"},
        timeout=10,
    )
    assert response.status_code == 201
    token = requests.post(
        f"{live_server}/api/v1/auth/login",
        json={"email": "o@example.com", "password": "pass-word"},
        timeout=10,
    ).json()["access_token"]
    event_id = requests.post(
        f"{live_server}/api/v1/events",
        json={"type": "ORDER_CREATED", "payload": {}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["eventId"]

    def failed():
        with app.app_context():
            event = Event.query.filter_by(status="FAILED").first()
            return event is not None and str(event.id) == event_id and event

    event = wait_for(failed, message="the order to reach the DLQ")
    assert event.attempts == 1
    assert "order has no items" in event.last_error


def test_embedded_default_runs_without_postgresql_or_redis(
    base_env, tmp_path, start_server, start_worker
):
    env = {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "EVENTFLOW_INSTANCE_PATH": str(tmp_path),
    }
    flask_cli({**base_env, **env}, "db", "upgrade", check=True)
    base = start_server(GUNICORN_WORKERS="1", **env)
    start_worker(**env)
    body = _walk(base, "ORDER_CREATED", {"items": [{"price": 3, "qty": 3}]})
    assert body["result"]["total"] == 9
    health = requests.get(f"{base}/health", timeout=10).json()
    assert health == {"status": "ok", "checks": {"database": "ok", "queue": "ok"}}
    # The counters live in the database here: the worker's count reaches the web process.
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert 'eventflow_events_total{transition="processed"} 1.0' in metrics
    assert (tmp_path / "eventflow.sqlite3").exists() and (tmp_path / "queue.sqlite3").exists()
