"""POST /api/v1/events: 202 after commit, validation, size limit, Idempotency-Key."""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
import requests

from eventflow.extensions import db
from eventflow.models import Event
from eventflow.tasks.queue import get_queue


def _count_events(app) -> int:
    with app.app_context():
        return Event.query.count()


def test_post_event_returns_202_with_id_after_the_row_is_committed(client, app, auth):
    response = client.post(
        "/api/v1/events",
        json={"type": "ORDER_CREATED", "payload": {"items": [{"price": 10, "qty": 2}]}},
        headers=auth,
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    with app.app_context():
        event = db.session.get(Event, uuid.UUID(body["eventId"]))
        assert event.status == "PENDING"
        assert event.payload == {"items": [{"price": 10, "qty": 2}]}
        # the worker's message is on the queue: one message, carrying only the id
        assert get_queue().huey.pending_count() == 1


def test_post_event_without_token_is_401_and_writes_nothing(client, app):
    response = client.post("/api/v1/events", json={"type": "A", "payload": {}})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"
    assert _count_events(app) == 0


def test_malformed_bodies_get_400_saying_what_is_wrong_and_write_nothing(client, app, auth):
    cases = [
        ({"payload": {}}, "invalid_type"),
        ({"type": "", "payload": {}}, "invalid_type"),
        ({"type": "x" * 65, "payload": {}}, "invalid_type"),
        ({"type": "has space", "payload": {}}, "invalid_type"),
        ({"type": "émoji", "payload": {}}, "invalid_type"),
        ({"type": 5, "payload": {}}, "invalid_type"),
        ({"type": "A"}, "invalid_payload"),
        ({"type": "A", "payload": []}, "invalid_payload"),
        ({"type": "A", "payload": "text"}, "invalid_payload"),
        ({"type": "A", "payload": None}, "invalid_payload"),
        ({"type": "A", "payload": {"k": "nul\u0000byte"}}, "invalid_payload"),
        ({"type": "A", "payload": {}, "extra": 1}, "unknown_field"),
        ([1, 2], "invalid_body"),
    ]
    for body, code in cases:
        response = client.post("/api/v1/events", json=body, headers=auth)
        assert response.status_code == 400, body
        error = response.get_json()["error"]
        assert error["code"] == code, body
        assert error["message"]
    raw_cases = ["{not json", "", '{"type": "A", "payload": {"x": NaN}}', "[" * 100000, "\xff"]
    for raw in raw_cases:
        response = client.post(
            "/api/v1/events", data=raw, headers={**auth, "Content-Type": "application/json"}
        )
        assert response.status_code == 400, raw[:20]
        assert response.get_json()["error"]["code"] == "invalid_json"
    assert _count_events(app) == 0


def test_numbers_are_stored_exactly_as_sent_and_out_of_range_ones_are_400(client, app, auth):
    payload = (
        '{"big": 123456789012345678901234567890, "u64": 18446744073709551616,'
        ' "i64": -9223372036854775809, "max": 18446744073709551615, "tenth": 0.1,'
        ' "exp": 2.5e-3, "digits": "12345678901234567890123", "n": [1, -2, 3.5]}'
    )
    headers = {**auth, "Content-Type": "application/json"}
    for path, body in [
        ("/api/v1/events", f'{{"type": "A", "payload": {payload}}}'),
        ("/api/v1/events", '{"type": "A", "payload": {"x": -17, "y": [0.5, 1e-3, true, null]}}'),
        ("/api/v1/events/batch", f'{{"events": [{{"type": "A", "payload": {payload}}}]}}'),
    ]:
        response = client.post(path, data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        answer = response.get_json()
        event_id = answer["items"][0]["eventId"] if "items" in answer else answer["eventId"]
        sent = json.loads(body)
        sent = sent["events"][0] if "events" in sent else sent
        with app.app_context():
            stored = db.session.get(Event, uuid.UUID(event_id)).payload
        assert stored == sent["payload"]
        assert all(isinstance(stored.get(k, 0), int) for k in ("big", "u64", "i64", "max"))
    for number in ["1e400", "-1e400", "Infinity", "-Infinity", "NaN"]:
        body = f'{{"type": "A", "payload": {{"x": {number}}}}}'
        response = client.post("/api/v1/events", data=body, headers=headers)
        assert response.status_code == 400, number
        assert response.get_json()["error"]["code"] == "invalid_json"


def test_valid_type_characters_and_64_char_limit_are_accepted(client, auth):
    for event_type in ["a", "ORDER_CREATED", "page.view-v2", "x" * 64]:
        response = client.post(
            "/api/v1/events", json={"type": event_type, "payload": {}}, headers=auth
        )
        assert response.status_code == 202, event_type


def test_body_over_1_mib_is_413_in_the_envelope(client, app, auth):
    big = json.dumps({"type": "A", "payload": {"blob": "x" * (1024 * 1024)}})
    response = client.post(
        "/api/v1/events", data=big, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert _count_events(app) == 0


def test_body_just_under_1_mib_is_accepted(client, auth):
    blob = "x" * (1024 * 1024 - 100)
    body = json.dumps({"type": "A", "payload": {"b": blob}})
    assert len(body) <= 1024 * 1024
    response = client.post(
        "/api/v1/events", data=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 202


def test_repeat_with_same_idempotency_key_returns_200_and_same_id(client, app, auth):
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=headers)
    again = client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["eventId"] == first.get_json()["eventId"]
    assert _count_events(app) == 1
    with app.app_context():
        assert get_queue().huey.pending_count() == 1


def test_idempotency_keys_are_per_user(client, app, make_user):
    from tests.conftest import bearer

    alice = bearer(client, make_user().email)
    bob = bearer(client, make_user().email)
    a = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={**alice, "Idempotency-Key": "same"},
    )
    b = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={**bob, "Idempotency-Key": "same"},
    )
    assert a.status_code == b.status_code == 202
    assert a.get_json()["eventId"] != b.get_json()["eventId"]


def test_idempotency_key_over_255_chars_is_400(client, app, auth):
    response = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={**auth, "Idempotency-Key": "k" * 256},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_idempotency_key"
    ok = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={**auth, "Idempotency-Key": "k" * 255},
    )
    assert ok.status_code == 202
    assert _count_events(app) == 1


def test_twelve_concurrent_identical_requests_create_one_event(live_server, app, make_user):
    user = make_user()
    token = requests.post(
        f"{live_server}/api/v1/auth/login",
        json={"email": user.email, "password": "correct-horse"},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "race-1"}

    def post(_):
        return requests.post(
            f"{live_server}/api/v1/events",
            json={"type": "ORDER_CREATED", "payload": {"items": []}},
            headers=headers,
            timeout=10,
        )

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(post, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [202]
    assert len({r.json()["eventId"] for r in responses}) == 1
    assert _count_events(app) == 1


def test_ingest_answers_202_when_the_queue_is_down_and_the_event_is_kept(
    migrated, base_env, make_user
):
    from eventflow import create_app
    from tests.conftest import bearer
    from tests.processes import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app({**base_env, "REDIS_URL": dead_redis})
    client = app.test_client()
    headers = bearer(client, make_user().email)
    response = client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=headers)
    assert response.status_code == 202
    with app.app_context():
        assert db.session.get(Event, uuid.UUID(response.get_json()["eventId"])).status == "PENDING"
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["status"] == "degraded"
    assert health.get_json()["checks"]["database"] == "ok"
    assert health.get_json()["checks"]["queue"] != "ok"
    redis.Redis.from_url(base_env["REDIS_URL"])  # the shared Redis was never touched


def test_ingest_answers_503_in_the_envelope_when_the_database_is_down(migrated, base_env):
    from flask_jwt_extended import create_access_token

    from eventflow import create_app
    from tests.processes import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    app = create_app({**base_env, "DATABASE_URL": dead})
    with app.app_context():
        token = create_access_token(
            identity=str(uuid.uuid4()), additional_claims={"role": "user", "sid": "s1", "gen": 0}
        )
    response = app.test_client().post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
