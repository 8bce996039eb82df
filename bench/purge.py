"""Retention benchmark: `flask events purge` of 1M events while ingest runs through gunicorn.

    .venv/bin/python bench/purge.py [--events 1000000] [--duration 10] [--connections 32]

Needs wrk on PATH (see bench/ingest.py). PostgreSQL and Redis must be running. What it does:
recreates its own database (`eventflow_bench_purge`) and empties Redis database 10, runs
`flask db upgrade`, creates the ingest user, COPYs --events PROCESSED events created 40 days ago
(the payload of bench/ingest.lua, one attempt row each, as bench/ingest_batch.py builds rows),
VACUUM ANALYZEs, and starts gunicorn (EVENTFLOW_ENV=production, no worker). Then:

1. ingest alone: wrk (bench/ingest.lua) for --duration seconds;
2. ingest while purging: `flask --app wsgi events purge --older-than 30d` starts, and once its
   first batch is committed wrk runs again for --duration seconds (with the default 1M events
   the purge is still deleting when wrk stops);
3. the purge finishes alone.

It prints ingest's events/s, p50/p99 and CPU per event (gunicorn, the bench database's
backends, wrk, the rest of the machine) for 1 and 2, and the purge's rate in rows/s: overall
(its own timing, without the command's start-up) and while ingest ran. In 2 the database's
backends include the purge's own, so `postgres` there is ingest's plus the purge's; gunicorn's
CPU per event is ingest's alone. Afterwards it checks that
the purge deleted exactly the old events and their attempts and kept every ingested one.
Everything it started is stopped, its database dropped and its Redis database emptied.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import redis
from harness import (
    BIN,
    ROOT,
    app_env,
    drop_database,
    fail,
    flask,
    free_port,
    recreate_database,
    start_gunicorn,
    stop,
)
from ingest import USER_EMAIL, USER_PASSWORD, CpuMeter, Run, login, require_wrk, run_wrk
from ingest_batch import PAYLOAD, user_id_of

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_bench_purge"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
COPY_BATCH = 50_000
EVENT_COLUMNS = (
    "id, user_id, type, payload, status, attempts, replayed_attempts, created_at, "
    "processed_at, next_attempt_at"
)
ATTEMPT_COLUMNS = "event_id, number, worker, started_at, finished_at, outcome"


def copy_old_events(database_url: str, user_id: str, total: int) -> float:
    """COPY `total` PROCESSED events created 40 days ago, one attempt each; seconds taken."""
    payload = json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).replace("\\", "\\\\")
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    conn = psycopg2.connect(database_url)
    began = time.monotonic()
    with conn.cursor() as cur:
        for start in range(0, total, COPY_BATCH):
            ids = [str(uuid.uuid4()) for _ in range(min(COPY_BATCH, total - start))]
            events = "".join(
                f"{i}\t{user_id}\tORDER_CREATED\t{payload}\tPROCESSED\t1\t0\t{old}\t{old}\t{old}\n"
                for i in ids
            )
            attempts = "".join(f"{i}\t1\tbench\t{old}\t{old}\tsucceeded\n" for i in ids)
            cur.copy_expert(
                f"COPY events ({EVENT_COLUMNS}) FROM STDIN", io.StringIO(events), size=1 << 20
            )
            cur.copy_expert(
                f"COPY event_attempts ({ATTEMPT_COLUMNS}) FROM STDIN",
                io.StringIO(attempts),
                size=1 << 20,
            )
            conn.commit()
    seconds = time.monotonic() - began
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE events")
        cur.execute("VACUUM ANALYZE event_attempts")
        cur.execute("CHECKPOINT")
    conn.close()
    return seconds


def count(database_url: str, query: str) -> int:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute(query)
        found: int = cur.fetchone()[0]
    conn.close()
    return found


OLD_EVENTS = "SELECT count(*) FROM events WHERE created_at < now() - interval '30 days'"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="old events to purge")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not 1_000 <= args.events <= 10_000_000 or not 1 <= args.duration <= 120:
        parser.error("--events must be 1,000-10,000,000 and --duration 1-120 seconds")
    return args


def main() -> int:
    args = parse_args()
    wrk = require_wrk()
    recreate_database(args.database_url)
    queue = redis.Redis.from_url(args.redis_url)
    queue.flushdb()  # our own database number, never FLUSHALL
    gunicorn = None
    purge: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-") as tmp:
        env = app_env(
            args.database_url, args.redis_url, tmp, JWT_ACCESS_TOKEN_EXPIRES_SECONDS="3600"
        )
        try:
            flask(env, "db", "upgrade")
            flask(env, "users", "create", USER_EMAIL, "--password", USER_PASSWORD)
            user_id = user_id_of(args.database_url, USER_EMAIL)
            seconds = copy_old_events(args.database_url, user_id, args.events)
            print(f"copied {args.events:,} old events + attempts in {seconds:.1f} s")
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base_url = f"http://127.0.0.1:{port}"
            token = login(base_url)
            url = f"{base_url}/api/v1/events"
            meter = CpuMeter(gunicorn.pid, args.database_url)
            print(f"wrk -t{args.wrk_threads} -c{args.connections} -s bench/ingest.lua {url}")
            run_wrk(wrk, url, token, 3, args, meter)  # warm-up
            alone = run_wrk(wrk, url, token, args.duration, args, meter)
            print(alone.line("ingest"))

            purge = subprocess.Popen(
                [str(BIN / "flask"), "--app", "wsgi", "events", "purge", "--older-than", "30d"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            # Ingest again once the purge is deleting (its first batch committed).
            while (before := count(args.database_url, OLD_EVENTS)) == args.events:
                if purge.poll() is not None:
                    fail(f"the purge ended before deleting:\n{purge.communicate()[0]}")
                time.sleep(0.05)
            began = time.monotonic()
            during = run_wrk(wrk, url, token, args.duration, args, meter)
            mid = Overlap(before - count(args.database_url, OLD_EVENTS), time.monotonic() - began)
            print(during.line("+ purge"))
            output, _ = purge.communicate(timeout=600)
            if purge.returncode != 0:
                fail(f"the purge failed:\n{output}")
            print(f"purge: {output.strip()}")
            seconds = float(output.rsplit(" s (", 1)[0].rsplit(", ", 1)[1])
            summarize(args, alone, during, mid, seconds)
            ok = check(args, alone, during)
        finally:
            if purge is not None and purge.poll() is None:
                purge.kill()
            if gunicorn is not None:
                stop(gunicorn)
            queue.flushdb()
            drop_database(args.database_url)
    return 0 if ok else 1


@dataclass
class Overlap:
    """Rows the purge deleted while wrk ran, and how long wrk ran."""

    deleted: int
    seconds: float


def summarize(
    args: argparse.Namespace, alone: Run, during: Run, mid: Overlap, seconds: float
) -> None:
    print(
        f"\npurge of {args.events:,} events (+ as many attempts), batches of 5,000: "
        f"{seconds:.1f} s, {args.events / seconds:,.0f} rows/s; while ingest ran "
        f"{mid.deleted / mid.seconds:,.0f} rows/s ({mid.deleted:,} in {mid.seconds:.1f} s)"
    )
    print(
        f"ingest: {alone.per_second:,.0f} -> {during.per_second:,.0f} events/s "
        f"({during.per_second / alone.per_second - 1:+.0%}), p99 {alone.p99_ms:.1f} -> "
        f"{during.p99_ms:.1f} ms"
    )
    if alone.cpu and during.cpu:
        print(f"  CPU ms/event alone:         {alone.cpu_line()}")
        print(f"  CPU ms/event during purge:  {during.cpu_line()}  (postgres: + the purge)")


def check(args: argparse.Namespace, alone: Run, during: Run) -> bool:
    """The old events and their attempts are gone; every event ingested meanwhile is kept."""
    old = count(args.database_url, OLD_EVENTS)
    attempts = count(args.database_url, "SELECT count(*) FROM event_attempts")
    rows = count(args.database_url, "SELECT count(*) FROM events")
    accepted = alone.accepted + during.accepted
    unanswered = alone.unanswered + during.unanswered + alone.socket_errors + during.socket_errors
    # The warm-up's events are kept too: at least the measured 202s, at most a few thousand more.
    ok = old == 0 and attempts == 0 and rows >= accepted
    print(
        f"\nchecks: old events left {old}, attempts left {attempts}, rows {rows:,} >= 202s "
        f"{accepted:,} (+ warm-up, + {unanswered} unanswered)"
    )
    print("  OK" if ok else "  FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(main())
