"""Concurrent ingest requests share one INSERT (group commit) and still each get their own answer.

Against a real gunicorn with one gevent worker, so that concurrent requests land in one process
and are written together.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import requests

PASSWORD = "correct-horse"


def login(url: str, email: str) -> dict[str, str]:
    response = requests.post(
        f"{url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    tokens = response.json()
    return {"access": tokens["access_token"], "refresh": tokens["refresh_token"]}


def post(url: str, token: str, marker: str, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(
        f"{url}/api/v1/events",
        json={"type": "GROUPED", "payload": {"marker": marker}},
        headers=headers,
        timeout=30,
    )


def stored_markers(database_url: str) -> dict[str, str]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text, payload->>'marker' FROM events")
        return dict(cur.fetchall())


def test_each_concurrent_request_gets_the_id_of_its_own_row(
    app, start_server, make_user, database_url
):
    url = start_server("-w", "1")
    token = login(url, make_user().email)["access"]
    markers = [uuid.uuid4().hex for _ in range(120)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(pool.map(lambda m: post(url, token, m), markers))

    assert [r.status_code for r in responses] == [202] * len(markers)
    stored = stored_markers(database_url)
    ids = [r.json()["eventId"] for r in responses]
    assert len(set(ids)) == len(markers) == len(stored)
    for marker, event_id in zip(markers, ids, strict=True):
        assert stored[event_id] == marker


def test_a_group_with_revoked_sessions_and_repeated_keys_answers_each_request_rightly(
    app, start_server, make_user, database_url
):
    url = start_server("-w", "1")
    live = login(url, make_user().email)
    dead = login(url, make_user().email)
    assert (
        requests.post(
            f"{url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {dead['access']}"}
        ).status_code
        == 204
    )

    jobs = []
    for n in range(30):
        jobs.append(("live", live["access"], f"live-{n}", None))
        jobs.append(("dead", dead["access"], f"dead-{n}", None))
        jobs.append(("repeat", live["access"], "repeat", "same-key"))
    with ThreadPoolExecutor(max_workers=45) as pool:
        responses = list(pool.map(lambda job: post(url, job[1], job[2], job[3]), jobs))

    by_kind: dict[str, list[requests.Response]] = {"live": [], "dead": [], "repeat": []}
    for (kind, *_), response in zip(jobs, responses, strict=True):
        by_kind[kind].append(response)
    assert all(r.status_code == 202 for r in by_kind["live"])
    assert all(r.status_code == 401 for r in by_kind["dead"])
    assert all(r.json()["error"]["code"] == "token_revoked" for r in by_kind["dead"])
    repeat_statuses = sorted(r.status_code for r in by_kind["repeat"])
    assert repeat_statuses == [200] * 29 + [202]
    assert len({r.json()["eventId"] for r in by_kind["repeat"]}) == 1

    stored = stored_markers(database_url)
    assert sorted(stored.values()) == sorted([f"live-{n}" for n in range(30)] + ["repeat"])
