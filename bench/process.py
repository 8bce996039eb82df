"""Processing benchmark: ingest N events, time until every one is PROCESSED.

    .venv/bin/python bench/process.py [--events 20000] [--runs 5] [--workers 2]

PostgreSQL must be running; redis-server must be on PATH (a private one is started on a free
port, without persistence, so nothing else's Redis is touched; `--redis-url` uses another).

What it does: recreates its own database (`eventflow_procbench`), runs `flask db upgrade`, and
starts `flask --app wsgi worker --workers 2 --processes` (two worker processes) with
EVENTFLOW_ENV=production. Once both processes report a heartbeat, each run empties the tables
and the queue, then ingests N events of a type with no handler (processed with result null):
multi-row INSERTs of 1,000 committed rows, each batch sent to the real Huey queue by the app's
own `EventQueue.enqueue` as soon as it is committed, so the workers start at once. The clock
runs from the first INSERT to the last `processed_at`. A warm-up run is discarded; the median
of the runs is printed. Each run checks that every event is PROCESSED after exactly one
attempt and that the queue is empty. Everything it started is stopped and its database dropped.

Each line also says where the time went: events per claim (how many events shared one claim
transaction), the CPU microseconds per event used by the worker processes, this database's
PostgreSQL backends, Redis and this script, and the machine's load average (on a shared
machine, other work shows up there and in the events/s, not in the CPU per event).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import redis
from harness import (
    ROOT,
    app_env,
    drop_database,
    fail,
    flask,
    recreate_database,
    start_redis,
    start_worker,
    stop,
)

sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_procbench"
EVENT_TYPE = "BENCH_NOOP"  # no handler registered: processed with result null
BATCH = 1000


@dataclass
class Run:
    events: int
    seed_seconds: float  # INSERT + enqueue of all N
    seconds: float  # first INSERT -> last processed_at
    cpu: dict[str, float]  # CPU seconds used meanwhile, by group of processes
    batch: float  # events per claim (one claim: one transaction for a batch)
    load: float  # the machine's 1-minute load average at the end (others' work shows here)

    @property
    def per_second(self) -> float:
        return self.events / self.seconds

    def line(self, label: str) -> str:
        cpu = ", ".join(f"{name} {1e6 * s / self.events:.0f}" for name, s in self.cpu.items())
        return (
            f"{label:>8}  {self.per_second:7.0f} events/s  {self.events} events in "
            f"{self.seconds:6.2f} s  (ingest {self.seed_seconds:5.2f} s)  "
            f"{self.batch:5.1f} events/claim  CPU us/event: {cpu}  load {self.load:.1f}"
        )


def rows(conn, sql: str, *params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def scalar(conn, sql: str, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def wait_for_heartbeats(conn, worker: subprocess.Popen, count: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while scalar(conn, "SELECT count(*) FROM workers") < count:
        if worker.poll() is not None or time.monotonic() > deadline:
            fail(f"the worker did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)


def reset(conn, store: redis.Redis) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE event_attempts, events")
    store.flushdb()


SEED_SQL = """
    INSERT INTO events (id, user_id, type, payload, status, attempts, replayed_attempts,
                        created_at, next_attempt_at)
    SELECT gen_random_uuid(), %s::uuid, %s, jsonb_build_object('n', n), 'PENDING', 0, 0,
           now(), now()
    FROM generate_series(%s, %s) AS n
    RETURNING id
"""


def seed(app, conn, user_id: uuid.UUID, events: int) -> float:
    """Ingest N events: committed batches of rows, each queued right after its commit.

    The rows are built by PostgreSQL (one multi-row INSERT per batch) so that the benchmark's
    own CPU stays small; the messages go through the app's real queue (EventQueue.enqueue).
    """
    from eventflow.tasks.queue import get_queue

    started = time.monotonic()
    with app.app_context():
        queue = get_queue()
        for start in range(0, events, BATCH):
            with conn.cursor() as cur:
                cur.execute(
                    SEED_SQL, (str(user_id), EVENT_TYPE, start, min(start + BATCH, events) - 1)
                )
                ids = [uuid.UUID(row[0]) for row in cur.fetchall()]
            if not queue.enqueue(ids, ingested=len(ids)):
                fail("could not enqueue")
    return time.monotonic() - started


class CpuMeter:
    """CPU seconds used by groups of processes, from /proc (Linux)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, groups):
        self.groups = groups  # name -> callable returning the group's pids now
        self.before = self._read()

    @classmethod
    def _cpu(cls, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / cls.TICK

    def _read(self) -> dict[str, dict[int, float]]:
        return {name: {pid: self._cpu(pid) for pid in pids()} for name, pids in self.groups.items()}

    def used(self) -> dict[str, float]:
        after = self._read()
        return {
            name: sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        ppid = int(rest.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_once(app, conn, store, user_id: uuid.UUID, events: int, groups) -> Run:
    reset(conn, store)
    meter = CpuMeter(groups)
    started_at = datetime.now(UTC)
    seed_seconds = seed(app, conn, user_id, events)
    deadline = time.monotonic() + 600
    while scalar(conn, "SELECT count(*) FROM events WHERE status <> 'PROCESSED'"):
        if time.monotonic() > deadline:
            fail("events still unprocessed after 10 minutes")
        time.sleep(0.1)
    cpu = meter.used()
    finished_at = scalar(conn, "SELECT max(processed_at) FROM events")
    check(conn, store, events)
    claims = scalar(
        conn, "SELECT count(*) FROM (SELECT DISTINCT worker, started_at FROM event_attempts) c"
    )
    seconds = (finished_at - started_at).total_seconds()
    return Run(events, seed_seconds, seconds, cpu, events / claims, os.getloadavg()[0])


def check(conn, store: redis.Redis, events: int) -> None:
    """Every event PROCESSED once, with result null and one succeeded attempt; queue empty."""
    processed = scalar(
        conn,
        "SELECT count(*) FROM events WHERE status = 'PROCESSED' AND attempts = 1 "
        "AND coalesce(result, 'null'::jsonb) = 'null'::jsonb",
    )
    attempts = scalar(conn, "SELECT count(*) FROM event_attempts WHERE outcome = 'succeeded'")
    all_attempts = scalar(conn, "SELECT count(*) FROM event_attempts")
    queued = store.llen("huey.redis.eventflow")
    if not processed == attempts == all_attempts == events or queued:
        fail(
            f"check failed: {processed} processed, {attempts}/{all_attempts} attempts, "
            f"{queued} messages left, for {events} events"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="events per run")
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--redis-url", help="use this Redis database (it is emptied!) instead of a private one"
    )
    parser.add_argument("--keep-log", help="copy the worker's log here at the end")
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 100 <= args.events <= 1_000_000:
        parser.error("--runs must be 1-20 and --events 100-1,000,000")
    return args


def main() -> int:
    args = parse_args()
    # A plain `kill` must still stop the worker and Redis and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/process.py: terminated"))
    recreate_database(args.database_url)
    redis_proc = worker = None
    with tempfile.TemporaryDirectory(prefix="eventflow-procbench-") as tmp:
        try:
            if args.redis_url:
                redis_url = args.redis_url
            else:
                redis_proc, redis_url = start_redis(Path(tmp) / "redis.log")
            env = app_env(args.database_url, redis_url, tmp)
            flask(env, "db", "upgrade")
            os.environ.update(env)
            from eventflow import create_app
            from eventflow.users import create_user

            app = create_app()
            with app.app_context():
                user_id = create_user("bench@example.com", "bench-password-123").id
            conn = psycopg2.connect(args.database_url)
            conn.autocommit = True
            store = redis.Redis.from_url(redis_url)

            log_path = Path(tmp) / "worker.log"
            worker = start_worker(env, args.workers, log_path)
            wait_for_heartbeats(conn, worker, args.workers, log_path)
            print(
                f"flask --app wsgi worker --workers {args.workers} --processes "
                f"(pid {worker.pid}); {args.events} {EVENT_TYPE} events per run"
            )
            groups = {
                "workers": lambda: descendants(worker.pid),
                "postgres": lambda: [
                    r[0]
                    for r in rows(
                        conn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    )
                ],
                "redis": lambda: [redis_proc.pid] if redis_proc else [],
                "bench": lambda: [os.getpid()],
            }
            warm_up = run_once(app, conn, store, user_id, min(args.events, 5000), groups)
            print(warm_up.line("warm-up"))
            runs = []
            for n in range(1, args.runs + 1):
                runs.append(run_once(app, conn, store, user_id, args.events, groups))
                print(runs[-1].line(f"run {n}"))
            median = statistics.median(r.per_second for r in runs)
            print(f"\nmedian of {len(runs)} runs: {median:.0f} events/s")
            conn.close()
        finally:
            if worker is not None:
                stop(worker)
                if args.keep_log:
                    Path(args.keep_log).write_bytes((Path(tmp) / "worker.log").read_bytes())
            if redis_proc is not None:
                stop(redis_proc)
            drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
