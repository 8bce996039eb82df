"""POST /api/v1/events/batch: up to 1,000 events, all or nothing, duplicates by idempotency key."""

import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import requests

from eventflow import create_app, users
from eventflow.extensions import db
from eventflow.models import Event
from eventflow.tasks.queue import get_queue
from tests.conftest import bearer
from tests.processes import flask_cli, free_port, wait_for

BATCH = "/api/v1/events/batch"


def _events(count: int, **fields) -> list[dict]:
    return [{"type": "ORDER_CREATED", "payload": {"n": n}, **fields} for n in range(count)]


def _rows(app) -> dict[str, Event]:
    with app.app_context():
        rows = {str(event.id): event for event in db.session.query(Event)}
        db.session.expunge_all()
        return rows


def _queued(app) -> int:
    with app.app_context():
        return get_queue().huey.pending_count()


def test_a_batch_of_1000_events_is_accepted_in_order_and_every_row_is_committed(client, app, auth):
    response = client.post(BATCH, json={"events": _events(1000)}, headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    assert body["accepted"] == 1000 and body["duplicates"] == 0
    assert [item["status"] for item in body["items"]] == ["queued"] * 1000
    rows = _rows(app)
    assert len(rows) == 1000
    for n, item in enumerate(body["items"]):  # the n-th id is the n-th event of the request
        row = rows[item["eventId"]]
        assert (row.type, row.payload, row.status) == ("ORDER_CREATED", {"n": n}, "PENDING")
    assert _queued(app) == 1000  # one message per event
    one = client.get(f"/api/v1/events/{body['items'][999]['eventId']}", headers=auth)
    assert one.status_code == 200 and one.get_json()["payload"] == {"n": 999}


def test_1001_events_are_refused_with_400_and_nothing_is_written(client, app, auth):
    response = client.post(BATCH, json={"events": _events(1001)}, headers=auth)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "too_many_events"
    assert "1,000" in error["message"]
    assert _rows(app) == {} and _queued(app) == 0


def test_bodies_that_are_not_a_list_of_events_get_400(client, app, auth):
    cases = [
        ({"events": []}, "invalid_events"),
        ({"events": "ORDER_CREATED"}, "invalid_events"),
        ({"events": {"type": "A", "payload": {}}}, "invalid_events"),
        ({"events": None}, "invalid_events"),
        ({}, "invalid_events"),
        ({"events": _events(1), "dry_run": True}, "unknown_field"),
        (_events(2), "invalid_body"),
    ]
    for body, code in cases:
        response = client.post(BATCH, json=body, headers=auth)
        assert response.status_code == 400, body
        error = response.get_json()["error"]
        assert error["code"] == code, body
        assert error["message"]
    response = client.post(BATCH, data="{not json", headers=auth, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert _rows(app) == {}


def test_one_bad_event_at_index_7_is_400_naming_it_and_nothing_is_written(client, app, auth):
    bad_events = [
        ({"type": "has space", "payload": {}}, "invalid_type", "events[7].type"),
        ({"type": "A\n", "payload": {}}, "invalid_type", "events[7].type"),
        ({"type": "x" * 65, "payload": {}}, "invalid_type", "events[7].type"),
        ({"payload": {}}, "invalid_type", "events[7].type"),
        ({"type": "A", "payload": [1]}, "invalid_payload", "events[7].payload"),
        ({"type": "A"}, "invalid_payload", "events[7].payload"),
        ({"type": "A", "payload": {"k": "nul\u0000"}}, "invalid_payload", "events[7].payload"),
        ({"type": "A", "payload": {"nul\u0000": 1}}, "invalid_payload", "events[7].payload"),
        ({"type": "A", "payload": {"lone": "\ud800"}}, "invalid_payload", "events[7].payload"),
        ({"type": "A", "payload": {}, "idempotency_key": "k" * 256}, "invalid_idempotency_key",
         "events[7].idempotency_key"),
        ({"type": "A", "payload": {}, "idempotency_key": ""}, "invalid_idempotency_key",
         "events[7].idempotency_key"),
        ({"type": "A", "payload": {}, "idempotency_key": 7}, "invalid_idempotency_key",
         "events[7].idempotency_key"),
        ({"type": "A", "payload": {}, "priority": 1}, "unknown_field", "events[7]"),
        ("ORDER_CREATED", "invalid_body", "events[7]"),
    ]  # fmt: skip
    for bad, code, where in bad_events:
        events = _events(20)
        events[7] = bad
        response = client.post(BATCH, json={"events": events}, headers=auth)
        assert response.status_code == 400, bad
        error = response.get_json()["error"]
        assert error["code"] == code, bad
        assert error["message"].startswith(f"{where}: "), error["message"]
    assert _rows(app) == {} and _queued(app) == 0


def test_single_events_obey_the_same_rules(client, app, auth):
    for bad in (
        {"type": "A\n", "payload": {}},  # a trailing newline is not a type character
        {"type": "A", "payload": {"lone": "\ud800"}},  # JSON allows it, PostgreSQL cannot store it
        {"type": "A", "payload": {}, "idempotency_key": "k"},  # only a batch event has this field
    ):
        response = client.post("/api/v1/events", json=bad, headers=auth)
        assert response.status_code == 400, bad
        assert response.get_json()["error"]["message"], bad
    assert _rows(app) == {}


def test_payloads_keep_what_json_allows(client, app, auth):
    payloads = [
        {"big": 2**70, "neg": -(2**65)},  # beyond 64 bits: stored exactly
        {"text": "a literal \\u0000 is six characters", "emoji": "\U0001f600", "quote": "it's"},
        {"deep": json.loads("[" * 300 + "]" * 300), "float": 1.5e-7, "unicode": "\u2028é"},
    ]
    events = [{"type": "A", "payload": payload} for payload in payloads]
    response = client.post(BATCH, json={"events": events}, headers=auth)
    assert response.status_code == 202, response.get_json()
    rows = _rows(app)
    for payload, item in zip(payloads, response.get_json()["items"], strict=True):
        assert rows[item["eventId"]].payload == payload


def test_repeated_keys_are_duplicates_carrying_the_original_id(client, app, auth):
    single = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {"from": "single"}},
        headers={**auth, "Idempotency-Key": "order-1"},
    )
    earlier = client.post(
        BATCH, json={"events": [{"type": "A", "payload": {}, "idempotency_key": "order-2"}]},
        headers=auth,
    )  # fmt: skip
    assert single.status_code == 202 and earlier.status_code == 202
    first_id = single.get_json()["eventId"]
    second_id = earlier.get_json()["items"][0]["eventId"]
    events = [
        {"type": "A", "payload": {"i": 0}, "idempotency_key": "order-1"},  # stored by POST /events
        {"type": "A", "payload": {"i": 1}, "idempotency_key": "order-3"},  # new
        {"type": "A", "payload": {"i": 2}, "idempotency_key": "order-3"},  # repeats index 1
        {"type": "A", "payload": {"i": 3}, "idempotency_key": "order-2"},  # stored by a batch
        {"type": "A", "payload": {"i": 4}},  # no key: always new
        {"type": "A", "payload": {"i": 5}, "idempotency_key": "order-1"},  # stored, again
    ]
    response = client.post(BATCH, json={"events": events}, headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    items = body["items"]
    assert [item["status"] for item in items] == [
        "duplicate", "queued", "duplicate", "duplicate", "queued", "duplicate"
    ]  # fmt: skip
    assert items[0]["eventId"] == items[5]["eventId"] == first_id
    assert items[2]["eventId"] == items[1]["eventId"]
    assert items[3]["eventId"] == second_id
    assert (body["accepted"], body["duplicates"]) == (2, 4)
    rows = _rows(app)
    assert len(rows) == 4  # the two earlier events and the two new ones
    assert rows[items[1]["eventId"]].payload == {"i": 1}
    assert rows[first_id].payload == {"from": "single"}  # the original is untouched
    assert _queued(app) == 4
    again = client.post(BATCH, json={"events": events}, headers=auth).get_json()
    repeated = [again["items"][i]["eventId"] for i in (0, 1, 2, 3, 5)]
    assert repeated == [items[i]["eventId"] for i in (0, 1, 2, 3, 5)]
    assert again["items"][4]["status"] == "queued"  # no key: a new event each time
    assert again["accepted"] == 1 and len(_rows(app)) == 5
    repeat = client.post(
        "/api/v1/events",
        json={"type": "A", "payload": {}},
        headers={**auth, "Idempotency-Key": "order-3"},
    )  # keys are shared with single ingest, both ways
    assert repeat.status_code == 200 and repeat.get_json()["eventId"] == items[1]["eventId"]


def test_keys_are_per_user(client, app, make_user):
    alice = bearer(client, make_user().email)
    bob = bearer(client, make_user().email)
    body = {"events": [{"type": "A", "payload": {}, "idempotency_key": "same"}]}
    a = client.post(BATCH, json=body, headers=alice).get_json()
    b = client.post(BATCH, json=body, headers=bob).get_json()
    assert a["accepted"] == b["accepted"] == 1
    assert a["items"][0]["eventId"] != b["items"][0]["eventId"]


def _waiting_for_locks(database_url: str) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_concurrent_identical_batches_create_each_key_once(
    live_server, app, make_user, database_url
):
    user = make_user()
    login = {"email": user.email, "password": "correct-horse"}
    token = requests.post(f"{live_server}/api/v1/auth/login", json=login, timeout=10).json()
    headers = {
        "Authorization": f"Bearer {token['access_token']}",
        "Content-Type": "application/json",
    }
    events = [
        {"type": "ORDER_CREATED", "payload": {"n": n}, "idempotency_key": f"order-{n}"}
        for n in range(500)
    ]
    # Each client sends the same events in its own order.
    batches = [random.Random(seed).sample(events, len(events)) for seed in range(8)]
    # Another writer holds one of the keys (uncommitted), so every batch stops part-way with
    # keys of its own taken, all at the same time: batches must then wait for each other's
    # keys in one order, or PostgreSQL would find them deadlocked and fail some.
    holder = psycopg2.connect(database_url)
    with holder.cursor() as cur:
        cur.execute(
            "INSERT INTO events (id, user_id, type, payload, status, attempts, replayed_attempts,"
            " idempotency_key, created_at) VALUES (%s, %s, 'A', '{}', 'PENDING', 0, 0,"
            " 'order-250', now())",
            (str(uuid.uuid4()), str(user.id)),
        )

    def post(batch: list[dict]):
        body = json.dumps({"events": batch})
        return requests.post(f"{live_server}{BATCH}", data=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        futures = [pool.submit(post, batch) for batch in batches]
        wait_for(
            lambda: _waiting_for_locks(database_url) >= len(batches),
            message="every batch to wait for a key",
        )
        holder.rollback()  # the other writer gives up its key
        holder.close()
        responses = [future.result() for future in futures]
    ids_by_key: dict[str, set[str]] = {}
    for batch, response in zip(batches, responses, strict=True):
        assert response.status_code == 202, response.text
        for event, item in zip(batch, response.json()["items"], strict=True):
            ids_by_key.setdefault(event["idempotency_key"], set()).add(item["eventId"])
    assert all(len(ids) == 1 for ids in ids_by_key.values())  # every client got the same id
    assert sum(response.json()["accepted"] for response in responses) == 500
    assert sum(response.json()["duplicates"] for response in responses) == 7 * 500
    rows = _rows(app)
    assert len(rows) == 500
    assert {row.idempotency_key for row in rows.values()} == {f"order-{n}" for n in range(500)}
    assert {next(iter(ids)) for ids in ids_by_key.values()} == set(rows)
    assert _queued(app) == 500


def test_a_dead_session_gets_401_and_nothing_is_written(client, app, make_user):
    user = make_user()
    keyed = {"events": [{"type": "A", "payload": {}, "idempotency_key": "k1"}]}
    headers = bearer(client, user.email)
    assert client.post(BATCH, json=keyed, headers=headers).status_code == 202
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    for body in ({"events": _events(10)}, keyed):  # new events, and only duplicates
        response = client.post(BATCH, json=body, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "token_revoked"

    headers = bearer(client, user.email)
    changed = client.post(
        "/api/v1/auth/password",
        json={"current_password": "correct-horse", "new_password": "another-horse"},
        headers=headers,
    )
    assert changed.status_code == 204
    response = client.post(BATCH, json={"events": _events(10)}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "token_revoked"
    assert len(_rows(app)) == 1 and _queued(app) == 1

    headers = bearer(client, user.email, "another-horse")
    with app.app_context():
        users.delete_user(user.email)
    response = client.post(BATCH, json={"events": _events(10)}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_token"
    assert _rows(app) == {}

    assert client.post(BATCH, json={"events": _events(1)}).status_code == 401  # no token


def test_body_over_1_mib_is_413_and_nothing_is_written(client, app, auth):
    events = [{"type": "A", "payload": {"blob": "x" * 1100}} for _ in range(1000)]
    response = client.post(BATCH, json={"events": events}, headers=auth)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert _rows(app) == {}


def test_the_rate_limit_counts_every_event_of_a_batch(app, base_env, make_user):
    limited = create_app({**base_env, "EVENTFLOW_RATE_LIMIT_INGEST": "5/hour"})
    client = limited.test_client()
    headers = bearer(client, make_user().email)
    assert client.post(BATCH, json={"events": _events(3)}, headers=headers).status_code == 202
    refused = client.post(BATCH, json={"events": _events(3)}, headers=headers)  # 3 + 3 > 5
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Single events share the count, and the refused batch used none of it.
    for expected in (202, 202, 429):
        single = client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=headers)
        assert single.status_code == expected
    assert len(_rows(app)) == 5


def test_batch_answers_202_when_the_queue_is_down_and_rows_are_kept(app, base_env, make_user):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cut_off = create_app({**base_env, "REDIS_URL": dead_redis})
    client = cut_off.test_client()
    headers = bearer(client, make_user().email)
    response = client.post(BATCH, json={"events": _events(50)}, headers=headers)
    assert response.status_code == 202
    assert response.get_json()["accepted"] == 50
    rows = _rows(app)
    assert {item["eventId"] for item in response.get_json()["items"]} == set(rows)
    assert {row.status for row in rows.values()} == {"PENDING"}  # recovery will queue them


def test_a_database_failure_part_way_through_writes_nothing_and_answers_503(
    client, app, auth, database_url
):
    # PostgreSQL shuts the session down at the batch's 600th row (SQLSTATE 57P01, as a server
    # shutdown would): the 599 rows before it must not survive.
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION fail_at_600() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'shutting down' USING ERRCODE = 'admin_shutdown'; END $$;"
            "CREATE TRIGGER fail_at_600 BEFORE INSERT ON events FOR EACH ROW"
            " WHEN (NEW.payload @> '{\"n\": 599}') EXECUTE FUNCTION fail_at_600()"
        )
    try:
        response = client.post(BATCH, json={"events": _events(1000)}, headers=auth)
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP TRIGGER fail_at_600 ON events; DROP FUNCTION fail_at_600()")
        conn.close()
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert _rows(app) == {} and _queued(app) == 0
    again = client.post(BATCH, json={"events": _events(1000)}, headers=auth)
    assert again.status_code == 202 and len(_rows(app)) == 1000


def test_batch_answers_503_in_the_envelope_when_the_database_is_down(migrated, base_env):
    from flask_jwt_extended import create_access_token

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    cut_off = create_app({**base_env, "DATABASE_URL": dead})
    with cut_off.app_context():
        token = create_access_token(
            identity=str(uuid.uuid4()), additional_claims={"role": "user", "sid": "s1", "gen": 0}
        )
    response = cut_off.test_client().post(
        BATCH, json={"events": _events(5)}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_batches_work_on_the_embedded_sqlite_default(base_env, tmp_path):
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EVENTFLOW_INSTANCE_PATH"] = str(tmp_path)
    flask_cli(env, "db", "upgrade", check=True)
    embedded = create_app(
        {
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "EVENTFLOW_INSTANCE_PATH": str(tmp_path),
            "EVENTFLOW_ENV": "test",
            "TESTING": True,
        }
    )
    with embedded.app_context():
        assert db.engine.dialect.name == "sqlite"
        users.create_user("solo@example.com", "correct-horse")
    client = embedded.test_client()
    headers = bearer(client, "solo@example.com")
    events = _events(300) + [{"type": "A", "payload": {"k": 1}, "idempotency_key": "k"}] * 2
    body = client.post(BATCH, json={"events": events}, headers=headers).get_json()
    assert (body["accepted"], body["duplicates"]) == (301, 1)
    again = client.post(BATCH, json={"events": events[-1:]}, headers=headers).get_json()
    assert again["items"] == [{"eventId": body["items"][-1]["eventId"], "status": "duplicate"}]
    assert client.post(BATCH, json={"events": _events(1001)}, headers=headers).status_code == 400
    listed = client.get("/api/v1/events?limit=1", headers=headers).get_json()
    assert listed["total"] == 301
    for n in (0, 299):
        one = client.get(f"/api/v1/events/{body['items'][n]['eventId']}", headers=headers)
        assert one.get_json()["payload"] == {"n": n}
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert client.post(BATCH, json={"events": _events(1)}, headers=headers).status_code == 401
