"""Batch ingest benchmark: `POST /api/v1/events/batch` through gunicorn, against PostgreSQL's COPY.

    .venv/bin/python bench/ingest_batch.py [--runs 5] [--duration 10] [--connections 4]
                                           [--batch 1000] [--keys]

PostgreSQL and Redis must be running. What it does: recreates its own database
(`eventflow_bench_batch`) and empties Redis database 10, runs `flask db upgrade`, creates two
users, starts `gunicorn -c gunicorn.conf.py wsgi:app` (the default shape) with
EVENTFLOW_ENV=production, logs in and warms up. Then each run measures, one after the other on
an emptied `events` table:

* the API: `--connections` client threads, each with its own keep-alive connection, POST batches
  of `--batch` events (the ORDER_CREATED event of bench/ingest.lua; with `--keys` each event
  also carries a new idempotency key) for `--duration` seconds;
* the ceiling: PostgreSQL's own COPY of the same rows (same columns, same payload, a commit per
  batch) into the same table, from 1 and from `--connections` connections (one process each).

It prints events/s per run and the medians, the API's share of COPY's rate, and CPU per event by
process group (gunicorn, the database's backends, the client, and the rest of the machine: other
people's processes included). After each run it checks that nothing was lost: the API user's rows
= the events the API accepted = the queue's messages, and the COPY user's rows = the rows copied.
No worker runs, so this is ingest alone. Everything it started is stopped, and its database and
Redis database are dropped/emptied at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis
import requests
from harness import (
    app_env,
    drop_database,
    fail,
    flask,
    free_port,
    recreate_database,
    start_gunicorn,
    stop,
)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_bench_batch"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
QUEUE_KEY = "huey.redis.eventflow"  # RedisHuey("eventflow")'s list, see eventflow/backend.py
API_USER = "batch-api@example.com"
COPY_USER = "batch-copy@example.com"
PASSWORD = "bench-password-123"
# The event of bench/ingest.lua (503 bytes as a single-event body).
PAYLOAD = {
    "orderId": "ord_7f3a9c21",
    "customerId": "cus_42817",
    "currency": "EUR",
    "channel": "web",
    "items": [
        {"sku": "SKU-1042", "name": "Espresso beans 1 kg", "price": 24.9, "qty": 2},
        {"sku": "SKU-2210", "name": "Milk frother", "price": 39.0, "qty": 1},
        {"sku": "SKU-0007", "name": "Paper filters (100)", "price": 3.5, "qty": 3},
    ],
    "shippingAddress": {
        "name": "Ada Lovelace",
        "street": "12 St James's Square",
        "city": "London",
        "postcode": "SW1Y 4JH",
        "country": "GB",
    },
    "coupon": None,
    "placedAt": "2025-11-25T10:15:00Z",
}
KEY_MARK = "@KEY@"  # replaced by a new prefix in every request's body when --keys is given
COPY_COLUMNS = (
    "id, user_id, type, payload, status, attempts, replayed_attempts, idempotency_key, "
    "created_at, next_attempt_at"
)


# --- CPU ---------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of gunicorn (with its workers), the bench database's backends, the machine.

    Linux only (/proc); elsewhere the CPU figures are left out. Backends are sampled while their
    connections are open, so the COPY processes keep theirs until after the second sample.
    """

    def __init__(self, gunicorn_pid: int, database_url: str):
        self.gunicorn_pid = gunicorn_pid
        self.database = urlsplit(database_url).path.lstrip("/")
        self.admin_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        local = urlsplit(database_url).hostname in (None, "127.0.0.1", "localhost", "::1")
        self.enabled = local and Path("/proc/stat").exists()

    def _process(self, pid: int) -> tuple[float, int]:
        """(user + system CPU seconds, parent pid) of one process."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0, -1
        return (int(fields[11]) + int(fields[12])) / self.tick, int(fields[1])

    def sample(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        conn = psycopg2.connect(self.admin_url)
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))
            backends = [row[0] for row in cur.fetchall()]
        conn.close()
        gunicorn = [self.gunicorn_pid] + [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and self._process(int(p.name))[1] == self.gunicorn_pid
        ]
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return {
            "gunicorn": sum(self._process(pid)[0] for pid in gunicorn),
            "postgres": sum(self._process(pid)[0] for pid in backends),
            "busy": (sum(fields) - fields[3] - fields[4]) / self.tick,  # all but idle, iowait
        }

    @staticmethod
    def per_event(
        before: dict[str, float], after: dict[str, float], client: float, events: int
    ) -> dict[str, float]:
        """Microseconds of CPU per event; `client` is the load generator's CPU seconds."""
        if not before or not events:
            return {}
        spent = {name: after[name] - before[name] for name in before}
        spent["client"] = client
        busy = spent.pop("busy")
        spent["rest"] = busy - sum(spent.values())
        return {name: 1e6 * seconds / events for name, seconds in spent.items()}


@dataclass
class Run:
    label: str
    events: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # us per event
    latencies_ms: list[float] = field(default_factory=list)  # per batch (API only)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        text = f"  {self.label:<8} {self.per_second:9,.0f} events/s"
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            text += f"  batch p50 {statistics.median(ordered):6.1f} ms  p99 {p99:6.1f} ms"
        if self.cpu:
            text += "  CPU us/event: " + cpu_text(self.cpu)
        if self.errors:
            text += f"  ERRORS {self.errors}"
        return text


def cpu_text(cpu: dict[str, float]) -> str:
    return "  ".join(f"{name} {us:.1f}" for name, us in cpu.items())


# --- the API -----------------------------------------------------------------------------------


def batch_body(size: int, keys: bool) -> str:
    event: dict = {"type": "ORDER_CREATED", "payload": PAYLOAD}
    events = [
        {**event, "idempotency_key": f"{KEY_MARK}-{n}"} if keys else event for n in range(size)
    ]
    return json.dumps({"events": events}, separators=(",", ":"))


def run_api(url: str, token: str, body: str, args: argparse.Namespace, meter: CpuMeter) -> Run:
    """--connections client threads POST batches for --duration seconds."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    template = body.encode()
    accepted = [0] * args.connections
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(args.connections + 1)
    deadline = 0.0

    def client(slot: int) -> None:
        http = requests.Session()
        sent = 0
        start.wait()
        while time.monotonic() < deadline:
            data = template
            if args.keys:  # a new key for every event of every batch
                data = template.replace(
                    KEY_MARK.encode(), f"{slot}-{sent}-{time.time_ns()}".encode()
                )
            began = time.perf_counter()
            try:
                response = http.post(url, data=data, headers=headers, timeout=120)
            except requests.RequestException as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed_ms = 1000 * (time.perf_counter() - began)
            sent += 1
            with lock:
                if response.status_code == 202:
                    accepted[slot] += response.json()["accepted"]
                    latencies.append(elapsed_ms)
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
        http.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.connections)]
    for thread in threads:
        thread.start()
    before, cpu_before = meter.sample(), resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    deadline = began + args.duration
    start.wait()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began  # until the last batch in flight was answered
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    events = sum(accepted)
    cpu = CpuMeter.per_event(before, meter.sample(), client_cpu, events)
    return Run("API", events, seconds, cpu, latencies, errors)


# --- PostgreSQL's COPY -------------------------------------------------------------------------


def copy_rows(database_url: str, user_id: str, args: argparse.Namespace, control, results) -> None:
    """One COPY connection (its own process): batches of --batch rows, a commit each."""
    payload = json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).replace("\\", "\\\\")
    conn = psycopg2.connect(database_url)
    cursor = conn.cursor()
    statement = f"COPY events ({COPY_COLUMNS}) FROM STDIN"
    control["ready"].release()
    control["start"].wait()
    deadline = time.monotonic() + args.duration
    rows = batches = 0
    began = time.process_time()
    while time.monotonic() < deadline:
        now = datetime.now(UTC).isoformat()
        rest = f"\t{user_id}\tORDER_CREATED\t{payload}\tPENDING\t0\t0\t"
        hexes = os.urandom(16 * args.batch).hex()
        lines = [
            f"{hexes[i : i + 32]}{rest}"
            + (f"k-{os.getpid()}-{batches}-{i}" if args.keys else "\\N")
            + f"\t{now}\t{now}\n"
            for i in range(0, 32 * args.batch, 32)
        ]
        cursor.copy_expert(statement, io.StringIO("".join(lines)), size=1 << 20)
        conn.commit()
        rows += args.batch
        batches += 1
    results.put((rows, time.process_time() - began))
    control["done"].wait()  # keep the backend until the parent has measured its CPU
    conn.close()


def run_copy(database_url: str, user_id: str, connections: int, args, meter: CpuMeter) -> Run:
    spawn = multiprocessing.get_context("spawn")
    control = {
        "ready": spawn.Semaphore(0),
        "start": spawn.Event(),
        "done": spawn.Event(),
    }
    results = spawn.Queue()
    workers = [
        spawn.Process(target=copy_rows, args=(database_url, user_id, args, control, results))
        for _ in range(connections)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        if not control["ready"].acquire(timeout=60):
            fail("a COPY process did not connect within 60 s")
    before = meter.sample()
    began = time.monotonic()
    control["start"].set()
    outcomes = [results.get(timeout=args.duration + 120) for _ in workers]
    seconds = time.monotonic() - began
    after = meter.sample()
    control["done"].set()
    for worker in workers:
        worker.join()
    rows = sum(n for n, _ in outcomes)
    cpu = CpuMeter.per_event(before, after, sum(cpu for _, cpu in outcomes), rows)
    return Run(f"COPY x{connections}", rows, seconds, cpu)


# --- checks and set-up -------------------------------------------------------------------------


def count_rows(database_url: str, user_id: str) -> int:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events WHERE user_id = %s", (user_id,))
        rows = cur.fetchone()[0]
    conn.close()
    return rows


def empty_events(database_url: str, queue: redis.Redis) -> None:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("TRUNCATE events CASCADE")
        cur.execute("CHECKPOINT")  # so one run's dirty pages are not written during the next
    conn.close()
    queue.delete(QUEUE_KEY)


def check_run(database_url: str, queue: redis.Redis, run: Run, user_id: str, api: bool) -> bool:
    rows = count_rows(database_url, user_id)
    if api:
        queued = queue.llen(QUEUE_KEY)
        ok = rows == run.events == queued and not run.errors
        detail = f"accepted {run.events}, rows {rows}, queue messages {queued}"
    else:
        ok = rows == run.events
        detail = f"copied {run.events}, rows {rows}"
    print(f"{'':11}{'ok' if ok else 'FAILED'}: {detail}")
    return ok


def user_id_of(database_url: str, email: str) -> str:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM users WHERE email = %s", (email,))
        user_id = str(cur.fetchone()[0])
    conn.close()
    return user_id


def summarize(runs: list[list[Run]], args: argparse.Namespace) -> None:
    print(
        f"\nmedian of {len(runs)} runs ({args.duration:g} s each, batches of {args.batch:,}"
        f"{' with keys' if args.keys else ''}, gunicorn.conf.py defaults):"
    )
    medians = {}
    for column in range(len(runs[0])):
        label = runs[0][column].label
        rates = [run[column].per_second for run in runs]
        medians[label] = statistics.median(rates)
        line = f"  {label:<8} {medians[label]:9,.0f} events/s  (runs: "
        line += " · ".join(f"{rate:,.0f}" for rate in rates) + ")"
        if all(run[column].cpu for run in runs):
            cpu = {
                name: statistics.median(run[column].cpu[name] for run in runs)
                for name in runs[0][column].cpu
            }
            line += f"\n{'':11}CPU us/event: {cpu_text(cpu)}"
        print(line)
    api = medians["API"]
    for label in medians:
        if label != "API" and medians[label]:
            print(f"  API / {label}: {api / medians[label]:.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of API warm-up")
    parser.add_argument("--connections", type=int, default=4, help="client/COPY connections")
    parser.add_argument("--batch", type=int, default=1000, help="events per batch (1-1000)")
    parser.add_argument("--keys", action="store_true", help="give every event a new key")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120:
        parser.error("--runs must be 1-20 and --duration 1-120 seconds")
    if not 1 <= args.batch <= 1000 or not 1 <= args.connections <= 64:
        parser.error("--batch must be 1-1000 and --connections 1-64")
    return args


def main() -> int:
    args = parse_args()
    recreate_database(args.database_url)
    queue = redis.Redis.from_url(args.redis_url)
    queue.flushdb()  # our own database number, never FLUSHALL
    gunicorn = None
    ok = True
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-") as tmp:
        env = app_env(
            args.database_url, args.redis_url, tmp, JWT_ACCESS_TOKEN_EXPIRES_SECONDS="3600"
        )
        try:
            flask(env, "db", "upgrade")
            for email in (API_USER, COPY_USER):
                flask(env, "users", "create", email, "--password", PASSWORD)
            api_user = user_id_of(args.database_url, API_USER)
            copy_user = user_id_of(args.database_url, COPY_USER)
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base = f"http://127.0.0.1:{port}"
            login = {"email": API_USER, "password": PASSWORD}
            token = requests.post(f"{base}/api/v1/auth/login", json=login, timeout=10).json()
            url = f"{base}/api/v1/events/batch"
            body = batch_body(args.batch, args.keys)
            print(
                f"gunicorn (pid {gunicorn.pid}) on {base}; {args.connections} connections, "
                f"batches of {args.batch:,} ({len(body):,} bytes)"
            )
            meter = CpuMeter(gunicorn.pid, args.database_url)
            warmup = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            print(run_api(url, token["access_token"], body, warmup, meter).line() + "  (warm-up)")
            runs = []
            for n in range(1, args.runs + 1):
                print(f"run {n}")
                measured = []
                empty_events(args.database_url, queue)
                measured.append(run_api(url, token["access_token"], body, args, meter))
                print(measured[-1].line())
                ok = check_run(args.database_url, queue, measured[-1], api_user, True) and ok
                for connections in sorted({1, args.connections}):
                    empty_events(args.database_url, queue)
                    measured.append(
                        run_copy(args.database_url, copy_user, connections, args, meter)
                    )
                    print(measured[-1].line())
                    ok = check_run(args.database_url, queue, measured[-1], copy_user, False) and ok
                runs.append(measured)
            stop(gunicorn)
            summarize(runs, args)
            print("\nchecks: " + ("OK, nothing lost" if ok else "FAILED"))
        finally:
            if gunicorn is not None:
                stop(gunicorn)
            queue.flushdb()
            drop_database(args.database_url)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
