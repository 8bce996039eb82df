"""Metrics history (CONTRACT §11): per-minute rollups per type in the database, read by range.

The end-to-end test runs gunicorn, a worker and a private redis-server, restarts all three and
reads the last hour back; the others read rows written by the app's own history writer.
"""

from __future__ import annotations

import csv
import io
import time

import pytest
import redis
import requests
from sqlalchemy import select

from eventflow.extensions import db
from eventflow.metrics_history import forget_old_metrics, latency_percentile
from eventflow.models import LATENCY_COLUMNS, metric_minutes
from eventflow.tasks.history import HISTORY_KEY, latency_bucket
from tests.conftest import bearer
from tests.pipeline import PRELOAD
from tests.processes import (
    Process,
    free_port,
    launch_gunicorn,
    start_redis,
    wait_for,
    wait_until_serving,
)
from tests.test_dashboard_views import log_in

URL = "/api/v1/metrics/history"


def history_of(app):
    return app.extensions[HISTORY_KEY]


def totals(points: list[dict]) -> dict[str, int]:
    return {m: sum(p[m] for p in points) for m in ("ingested", "processed", "failed", "retried")}


# --- end to end: real processes, restarted -------------------------------------------------------


def test_history_shows_the_last_hour_after_web_workers_and_redis_restart(
    app, client, make_user, base_env, start_worker, tmp_path
):
    port = free_port()
    redis_proc, redis_url = start_redis(tmp_path / "redis.log", port=port)
    env = {**base_env, "REDIS_URL": redis_url, "GUNICORN_WORKERS": "1"}
    started: list[Process] = [redis_proc]

    def serve() -> str:
        proc, url = launch_gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log", PRELOAD)
        started.append(proc)
        wait_until_serving(proc, url)
        return url

    try:
        headers = bearer(client, make_user(admin=True).email)
        write(app, "history.expired", ingested=1, ago=31 * 24 * 3600)  # past the 30 days kept
        # The web keeps the default flush interval (60 s): its counts reach the database when
        # gunicorn's workers exit. The worker flushes every 0.2 s (EVENTFLOW_METRICS_FLUSH_SECONDS).
        web = serve()
        worker = start_worker(
            REDIS_URL=redis_url, EVENTFLOW_METRICS_FLUSH_SECONDS="0.2", EVENTFLOW_MAX_ATTEMPTS="2"
        )
        events = [{"type": "history.ok", "payload": {"n": n}} for n in range(5)]
        events += [{"type": "history.fails", "payload": {"n": n}} for n in range(2)]
        answer = requests.post(
            f"{web}/api/v1/events/batch", json={"events": events}, headers=headers, timeout=10
        )
        assert answer.status_code == 202, answer.text
        one = {"type": "history.ok", "payload": {"n": 5}}  # the single-event (group commit) path
        answer = requests.post(f"{web}/api/v1/events", json=one, headers=headers, timeout=10)
        assert answer.status_code == 202, answer.text

        def worker_counts_written() -> bool:
            with app.app_context():
                rows = db.session.execute(select(metric_minutes)).mappings().all()
                db.session.rollback()
            sums = {m: sum(r[m] for r in rows) for m in ("processed", "failed", "retried")}
            expired = [r for r in rows if r["type"] == "history.expired"]
            return sums == {"processed": 6, "failed": 2, "retried": 2} and not expired

        # The worker's recovery pass (every 0.5 s here) has deleted the expired row too.
        wait_for(worker_counts_written, message="the worker's counts flushed, old rows deleted")
        # Everything stops: the worker and gunicorn by SIGTERM, Redis with all its data.
        worker.stop()
        for proc in reversed(started):
            proc.stop()
        redis_proc, _ = start_redis(tmp_path / "redis-2.log", port=port)
        started[:] = [redis_proc]
        assert redis.Redis.from_url(redis_url).dbsize() == 0

        web = serve()
        start_worker(REDIS_URL=redis_url)
        hour = requests.get(f"{web}{URL}?range=1h", headers=headers, timeout=10).json()
        assert hour["range"] == "1h" and hour["step_seconds"] == 60
        assert len(hour["points"]) == 60
        # The test's own types: an in-process app of an earlier test in this process may flush
        # its own ingest counts (other types) into the same table at any time.
        assert {m: v for m, v in totals(hour["points"]).items() if m != "ingested"} == {
            "processed": 6,
            "failed": 2,
            "retried": 2,
        }
        fails = requests.get(f"{web}{URL}?range=1h&type=history.fails", headers=headers, timeout=10)
        assert totals(fails.json()["points"]) == {
            "ingested": 2,
            "processed": 0,
            "failed": 2,
            "retried": 2,
        }
        busy = [p for p in hour["points"] if p["processed"]]
        assert busy and all(p["p50_ms"] is not None for p in busy)
        assert all(p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] for p in busy)

        ok = requests.get(f"{web}{URL}?range=1h&type=history.ok", headers=headers, timeout=10)
        assert totals(ok.json()["points"]) == {
            "ingested": 6,
            "processed": 6,
            "failed": 0,
            "retried": 0,
        }
    finally:
        for proc in reversed(started):
            proc.stop()


# --- the API -------------------------------------------------------------------------------------


def write(app, event_type: str, *, ingested=0, processed_ms=(), failed=0, retried=0, ago=0):
    """Count through the app's history writer, `ago` seconds in the past, then flush."""
    history, at = history_of(app), time.time() - ago
    history.count("ingested", [event_type] * ingested, at=at)
    history.count("failed", [event_type] * failed, at=at)
    history.count("retried", [event_type] * retried, at=at)
    history.processed([(event_type, ms) for ms in processed_ms], at=at)
    assert history.flush() >= 1


def test_each_range_has_its_step_and_a_point_for_every_step(app, client, admin_auth):
    write(app, "history.api", ingested=3, processed_ms=[4.0, 40.0], ago=2 * 3600)
    expected = {"1h": (60, 60), "24h": (300, 288), "7d": (3600, 168), "30d": (21600, 120)}
    for name, (step, count) in expected.items():
        body = client.get(f"{URL}?range={name}", headers=admin_auth).get_json()
        assert (body["range"], body["step_seconds"], len(body["points"])) == (name, step, count)
        times = [p["t"] for p in body["points"]]
        assert times == sorted(times) and times[0].endswith("Z")
        seen = totals(body["points"])
        # Two hours ago is outside the last hour, inside every other range.
        assert seen["ingested"] == (0 if name == "1h" else 3)
        assert seen["processed"] == (0 if name == "1h" else 2)
        empty = [p for p in body["points"] if not p["ingested"]]
        assert empty and all(p["p50_ms"] is None and p["failed"] == 0 for p in empty)


def test_type_filter_counts_only_that_type(app, client, admin_auth):
    write(app, "history.a", ingested=5, failed=1)
    write(app, "history.b", ingested=2, retried=4)
    a = client.get(f"{URL}?range=1h&type=history.a", headers=admin_auth).get_json()
    both = client.get(f"{URL}?range=1h", headers=admin_auth).get_json()
    assert totals(a["points"]) == {"ingested": 5, "processed": 0, "failed": 1, "retried": 0}
    assert totals(both["points"]) == {"ingested": 7, "processed": 0, "failed": 1, "retried": 4}


def test_csv_has_a_header_row_and_a_line_per_point(app, client, admin_auth):
    write(app, "history.csv", ingested=2, processed_ms=[12.0, 12.0])
    response = client.get(f"{URL}?range=1h&format=csv&type=history.csv", headers=admin_auth)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == [
        "t",
        "ingested",
        "processed",
        "failed",
        "retried",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ]
    assert len(rows) == 61
    last = dict(zip(rows[0], rows[-1], strict=True))
    assert (last["ingested"], last["processed"]) == ("2", "2")
    assert 10 < float(last["p50_ms"]) <= 20  # 12 ms is in the 10-20 ms bucket
    assert rows[1][5] == ""  # an empty minute has no percentile


@pytest.mark.parametrize(
    "query, code",
    [
        ("range=2h", "invalid_range"),
        ("range=", "invalid_range"),
        ("type=no%20spaces", "invalid_type"),
        ("type=" + "x" * 65, "invalid_type"),
        ("format=xml", "invalid_format"),
    ],
)
def test_bad_range_type_or_format_is_a_400_naming_it(client, admin_auth, query, code):
    response = client.get(f"{URL}?{query}", headers=admin_auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_viewers_read_history_and_users_are_refused(client, make_user):
    viewer = bearer(client, make_user(role="viewer").email)
    user = bearer(client, make_user().email)
    assert client.get(f"{URL}?range=24h", headers=viewer).status_code == 200
    assert client.get(f"{URL}?range=24h", headers=user).status_code == 403
    assert client.get(URL).status_code == 401


# --- retention and percentiles ---------------------------------------------------------------


def test_retention_deletes_rollups_older_than_the_setting_once_an_hour(app):
    write(app, "history.old", ingested=1, ago=31 * 24 * 3600)
    write(app, "history.recent", ingested=1, ago=29 * 24 * 3600)
    with app.app_context():
        assert forget_old_metrics(30) == 1
        kept = db.session.scalars(select(metric_minutes.c.type)).all()
        assert kept == ["history.recent"]
        # The run is recorded in periodic_runs: another worker's pass within the hour skips it.
        write(app, "history.old", ingested=1, ago=31 * 24 * 3600)
        assert forget_old_metrics(30) == 0


def test_percentiles_come_from_the_summed_histogram():
    buckets = [0] * len(LATENCY_COLUMNS)
    for ms in [3.0] * 90 + [300.0] * 9 + [9_000_000.0]:
        buckets[latency_bucket(ms)] += 1
    assert 2 < latency_percentile(buckets, 0.50) <= 5
    assert 200 < latency_percentile(buckets, 0.95) <= 500
    assert latency_percentile(buckets, 1.0) == 5_000_000  # beyond the last bound
    assert latency_percentile([0] * len(LATENCY_COLUMNS), 0.5) is None


# --- the dashboard ---------------------------------------------------------------------------


def test_overview_history_range_buttons_pick_the_range_and_csv(app, client, make_user):
    write(app, "history.page", ingested=4, ago=3 * 3600)
    staff = make_user(role="viewer")
    assert log_in(client, staff.email).status_code == 302
    page = client.get("/dashboard/").get_data(as_text=True)
    for name in ("1h", "24h", "7d", "30d"):
        assert f'data-range="{name}"' in page and f"history={name}" in page
    assert '<a class="btn btn-primary" data-range="1h"' in page  # the last hour by default
    assert "0 ingested" in page  # three hours ago is not in the last hour
    day = client.get("/dashboard/?history=24h").get_data(as_text=True)
    assert '<a class="btn btn-primary" data-range="24h"' in day
    assert "4 ingested" in day and "one point per 5 min" in day
    assert "history=1h" in client.get("/dashboard/?history=2y").get_data(as_text=True)
    csv_text = client.get("/dashboard/history.csv?history=7d").get_data(as_text=True)
    lines = csv_text.splitlines()
    assert lines[0].startswith("t,ingested") and len(lines) == 1 + 168
