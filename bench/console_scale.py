"""Console at scale: every list, filter and dashboard page against a database of N events.

    .venv/bin/python bench/console_scale.py [--events 10000000] [--requests 20] [--keep]

PostgreSQL must be running; redis-server must be on PATH (a private one is started on a free
port). CONTRACT section 10 "Scale": with 10M events (1M of them waiting or failed) every list,
filter and dashboard page answers in under 200 ms p95, and the live feed's cost does not grow
with the number of events.

What it does: recreates its own database (`eventflow_console`), runs `flask db upgrade`, then
loads N events with COPY (indexes and the count triggers set aside meanwhile, then rebuilt, the
counts filled once, VACUUM ANALYZE): 90 % PROCESSED, 5 % PENDING, 1 % RETRYING, 4 % FAILED
(each with 3 attempts and a traceback), over 30 days, six types, 50 users of uneven activity,
payloads with a nested customer and a list of items. Then it starts gunicorn (production
settings), logs in an admin over the API and through the dashboard's form, and times
`--requests` requests (after 2 warm-ups) of each line of CHECKS, printing p50/p95 per line and
marking those over 200 ms p95. It also times the `stats` snapshot in-process (and its size) and
measures the CPU of this database's PostgreSQL backends for 30 s with no dashboard open, then
30 s with one open over Socket.IO.

A new filter is one more line in CHECKS. `--keep` keeps the database (and skips the load when
it already holds N events) so a change can be timed again without loading anew.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import requests
import socketio
from harness import (
    ROOT,
    admin_connection,
    app_env,
    drop_database,
    fail,
    flask,
    free_port,
    recreate_database,
    start_gunicorn,
    start_redis,
    stop,
)

sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_console"
ADMIN_EMAIL, PASSWORD = "console-admin@example.com", "bench-password-123"
BUDGET_MS = 200
TYPES = ["ORDER_CREATED", "ORDER_PAID", "page.view", "signup", "invoice.sent", "email.bounced"]
STATUSES = [("PROCESSED", 0.90), ("PENDING", 0.05), ("RETRYING", 0.01), ("FAILED", 0.04)]
USERS = 50
COLUMNS = (
    "id, user_id, type, payload, status, attempts, replayed_attempts, result, last_error, "
    "created_at, processed_at, next_attempt_at"
)
ERROR = "ValueError: customer 4411 has no default payment method"
TRACEBACK = 'Traceback (most recent call last):\\n  File "handlers.py", line 12\\n' + ERROR

# What to time: (name, "api" | "page", path). {user}, {type}, {failed} are filled in.
CHECKS = [
    ("API /events", "api", "/api/v1/events"),
    ("API /events page 100 of 100", "api", "/api/v1/events?page=100&limit=100"),
    ("API /events cursor", "api", "/api/v1/events?cursor=&limit=100"),
    ("API /events status=FAILED", "api", "/api/v1/events?status=FAILED"),
    ("API /events status=PENDING", "api", "/api/v1/events?status=PENDING"),
    ("API /events type", "api", "/api/v1/events?type={type}"),
    ("API /events type+status", "api", "/api/v1/events?type={type}&status=RETRYING"),
    ("API /events user", "api", "/api/v1/events?user={user}"),
    ("API /events user+status", "api", "/api/v1/events?user={user}&status=FAILED"),
    ("API /events/{id}", "api", "/api/v1/events/{failed}"),
    ("API /dlq", "api", "/api/v1/dlq"),
    ("API /dlq type", "api", "/api/v1/dlq?type={type}"),
    ("/metrics", "api", "/metrics"),
    ("page Overview", "page", "/dashboard/"),
    ("page Events", "page", "/dashboard/events"),
    ("page Events status+type", "page", "/dashboard/events?status=FAILED&type={type}"),
    ("page Events user", "page", "/dashboard/events?user={user}"),
    ("page Event detail", "page", "/dashboard/events/{failed}"),
    ("page DLQ", "page", "/dashboard/dlq"),
    ("page DLQ type", "page", "/dashboard/dlq?type={type}"),
]


# ---------------------------------------------------------------- the data


def event_rows(n: int, user_ids: list[str], rng: random.Random) -> Iterator[tuple[str, ...]]:
    """N events as COPY text rows (oldest first), plus attempts for the failed ones."""
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    step = timedelta(days=30) / n
    weights = [1 / (k + 1) for k in range(len(user_ids))]  # a few busy users, many quiet ones
    users = rng.choices(user_ids, weights, k=n)
    statuses = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=n)
    for i in range(n):
        created = start + step * i
        status = statuses[i]
        event_type = TYPES[i % len(TYPES)]
        payload = {
            "order_id": 100_000 + i,
            "customer": {"id": f"c{i % 20_000}", "tier": ("gold", "silver", "basic")[i % 3]},
            "items": [{"sku": f"SKU-{i % 977}", "qty": 1 + i % 4, "price": 9.99}],
            "source": ("web", "ios", "android")[i % 3],
        }
        processed = status == "PROCESSED"
        yield (
            str(uuid.uuid4()),
            users[i],
            event_type,
            json.dumps(payload, separators=(",", ":")),
            status,
            {"PROCESSED": "1", "FAILED": "3", "RETRYING": "1"}.get(status, "0"),
            "0",
            '{"ok":true}' if processed else "\\N",
            ERROR if status == "FAILED" else "\\N",
            created.isoformat(),
            (created + timedelta(milliseconds=40)).isoformat() if processed else "\\N",
            created.isoformat() if status in ("PENDING", "RETRYING") else "\\N",
        )


class RowStream(io.RawIOBase):
    """A file-like object over generated rows, for COPY FROM STDIN without a temporary file."""

    def __init__(self, rows: Iterator[tuple[str, ...]], failed: list[tuple[str, str]]):
        self.rows = rows
        self.failed = failed  # (id, created_at) of the FAILED events, for their attempts
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def]
        while len(self.buffer) < len(target):
            chunk = []
            for row in self.rows:
                chunk.append("\t".join(row))
                if row[4] == "FAILED":
                    self.failed.append((row[0], row[9]))
                if len(chunk) == 5000:
                    break
            if not chunk:
                break
            self.buffer += ("\n".join(chunk) + "\n").encode()
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


def load(database_url: str, events: int) -> None:
    """Fill the empty, migrated database with users and N events (see the module docstring)."""
    rng = random.Random(42)
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT password_hash FROM users WHERE email = %s", (ADMIN_EMAIL,))
        (password_hash,) = cur.fetchone()
        user_ids = [str(uuid.uuid4()) for _ in range(USERS)]
        for k, user_id in enumerate(user_ids):
            cur.execute(
                "INSERT INTO users (id, email, password_hash, role, created_at, token_generation)"
                " VALUES (%s, %s, %s, 'user', now(), 0)",
                (user_id, f"customer-{k}@example.com", password_hash),
            )
        # Rebuilding the indexes once is far faster than keeping them up per row.
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
            "AND indexname NOT LIKE '%pkey' AND indexdef NOT LIKE '%UNIQUE%'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute("ALTER TABLE events DISABLE TRIGGER USER")
        failed: list[tuple[str, str]] = []
        started = time.monotonic()
        cur.copy_expert(
            f"COPY events ({COLUMNS}) FROM STDIN",
            io.BufferedReader(RowStream(event_rows(events, user_ids, rng), failed), 1 << 20),
        )
        attempts = io.StringIO()
        for event_id, created in failed:
            for number, outcome in ((1, "retry"), (2, "retry"), (3, "failed")):
                attempts.write(
                    f"{event_id}\t{number}\tbench\t{created}\t{created}\t{outcome}\t{ERROR}\t"
                    f"{TRACEBACK}\n"
                )
        attempts.seek(0)
        cur.copy_expert(
            "COPY event_attempts (event_id, number, worker, started_at, finished_at, outcome, "
            "error, traceback) FROM STDIN",
            attempts,
        )
        print(f"copied {events:,} events in {time.monotonic() - started:.0f} s", flush=True)
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ALTER TABLE events ENABLE TRIGGER USER")
        cur.execute("DELETE FROM event_counts")
        cur.execute(
            "INSERT INTO event_counts (type, status, shard, count) "
            "SELECT type, status, 0, count(*) FROM events GROUP BY type, status"
        )
    conn.close()
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()
    print(f"loaded, indexed and analyzed in {time.monotonic() - started:.0f} s", flush=True)


def stored_events(database_url: str) -> int:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(count), 0) FROM event_counts")
        (n,) = cur.fetchone()
    conn.close()
    return int(n)


def samples(database_url: str) -> dict[str, str]:
    """The values the CHECKS' paths are filled with: the busiest user, a type, a failed id."""
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT u.email FROM users u WHERE u.email LIKE 'customer-%' ORDER BY u.email LIMIT 1"
        )
        (user,) = cur.fetchone()
        cur.execute("SELECT id FROM events WHERE status = 'FAILED' LIMIT 1")
        (failed,) = cur.fetchone()
    conn.close()
    return {"user": user, "type": TYPES[0], "failed": str(failed)}


# ---------------------------------------------------------------- the timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(fraction * len(ordered) + 0.5) - 1)]


def time_requests(session: requests.Session, url: str, count: int, **kwargs) -> list[float]:
    """Milliseconds of `count` GETs after 2 warm-ups; any status but 200 stops the bench."""
    timings = []
    for n in range(count + 2):
        started = time.perf_counter()
        response = session.get(url, timeout=60, allow_redirects=False, **kwargs)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            fail(f"GET {url} answered {response.status_code}: {response.text[:200]}")
        if n >= 2:
            timings.append(elapsed)
    return timings


def dashboard_session(base_url: str) -> requests.Session:
    """A logged-in dashboard session. Production cookies are Secure, which requests keeps from
    plain http, so the session cookie goes as a header."""
    browser = requests.Session()
    form = browser.get(f"{base_url}/dashboard/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]  # type: ignore[index]
    answer = browser.post(
        f"{base_url}/dashboard/login",
        data={"email": ADMIN_EMAIL, "password": PASSWORD, "csrf_token": token, "next": ""},
        headers={"Cookie": f"session={form.cookies['session']}"},
        allow_redirects=False,
        timeout=10,
    )
    if answer.status_code != 302:
        fail(f"dashboard login answered {answer.status_code}")
    logged_in = requests.Session()
    logged_in.headers["Cookie"] = f"session={answer.cookies['session']}"
    return logged_in


def time_snapshot(env: dict[str, str], count: int) -> tuple[list[float], int]:
    """(ms of each `stats` snapshot as the broadcaster takes it, bytes of its message)."""
    from eventflow import create_app
    from eventflow.stats import snapshot
    from eventflow.tasks.queue import get_queue

    app = create_app(env)
    timings = []
    with app.app_context():
        stats = get_queue().stats
        for _ in range(count):
            started = time.perf_counter()
            tick = snapshot(stats, history=False)
            timings.append((time.perf_counter() - started) * 1000)
    return timings, len(json.dumps(tick))


def backend_cpu_seconds(database_url: str) -> dict[int, float]:
    """CPU seconds used so far by each of this database's PostgreSQL backends (Linux /proc)."""
    conn, name = admin_connection(database_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        pids = [row[0] for row in cur.fetchall()]
    conn.close()
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    return used


def backend_cpu_percent(database_url: str, seconds: float) -> float:
    """% of one core the database's backends used over the next `seconds` (new ones included)."""
    before, started = backend_cpu_seconds(database_url), time.monotonic()
    time.sleep(seconds)
    after = backend_cpu_seconds(database_url)
    used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return 100 * used / (time.monotonic() - started)


def live_feed_cost(base_url: str, token: str, database_url: str, seconds: float) -> str:
    idle = backend_cpu_percent(database_url, seconds)
    client = socketio.Client(reconnection=False)
    received: list[int] = []
    client.on("stats", lambda stats: received.append(len(json.dumps(stats))), "/dashboard")
    client.connect(
        base_url, namespaces=["/dashboard"], transports=["websocket"], auth={"token": token}
    )
    try:
        live = backend_cpu_percent(database_url, seconds)
    finally:
        client.disconnect()
    later = received[1:] or [0]
    return (
        f"PostgreSQL backends: {idle:.1f} % of a core with no dashboard, {live:.1f} % with one "
        f"open ({seconds:.0f} s each); {len(received)} `stats` received, the first "
        f"{received[0] if received else 0:,} bytes, later ones at most {max(later):,} bytes"
    )


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events (10,000,000)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per check")
    parser.add_argument("--feed-seconds", type=float, default=30, help="live feed CPU window")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    args = parser.parse_args()
    if args.events < 10_000:
        parser.error("--events must be at least 10,000")
    return args


def main() -> int:
    args = parse_args()
    reuse = False
    if args.keep:
        try:
            reuse = stored_events(args.database_url) == args.events
        except psycopg2.Error:
            reuse = False
    gunicorn = redis_server = None
    with tempfile.TemporaryDirectory(prefix="eventflow-console-") as tmp:
        try:
            redis_server, redis_url = start_redis(Path(tmp) / "redis.log")
            env = app_env(
                args.database_url, redis_url, tmp, JWT_ACCESS_TOKEN_EXPIRES_SECONDS="3600"
            )
            if not reuse:
                recreate_database(args.database_url)
                flask(env, "db", "upgrade")
                flask(env, "users", "create", ADMIN_EMAIL, "--admin", "--password", PASSWORD)
                load(args.database_url, args.events)
            values = samples(args.database_url)
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base_url = f"http://127.0.0.1:{port}"
            login = requests.post(
                f"{base_url}/api/v1/auth/login",
                json={"email": ADMIN_EMAIL, "password": PASSWORD},
                timeout=10,
            )
            token = login.json()["access_token"]
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {token}"
            sessions = {"api": api, "page": dashboard_session(base_url)}
            print(f"{args.events:,} events; gunicorn on {base_url}; {args.requests} requests each")
            print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8}")
            over = []
            for name, kind, path in CHECKS:
                url = base_url + path.format(**values)
                timings = time_requests(sessions[kind], url, args.requests)
                p95 = percentile(timings, 0.95)
                mark = "  over" if p95 > BUDGET_MS else ""
                print(f"{name:34} {statistics.median(timings):8.1f} {p95:8.1f}{mark}", flush=True)
                if mark:
                    over.append(name)
            timings, size = time_snapshot(env, args.requests)
            print(
                f"{'stats snapshot (in-process)':34} {statistics.median(timings):8.1f} "
                f"{percentile(timings, 0.95):8.1f}   ({size:,} B)"
            )
            print(live_feed_cost(base_url, token, args.database_url, args.feed_seconds))
            print(f"over {BUDGET_MS} ms p95: {', '.join(over) or 'none'}")
        finally:
            if gunicorn is not None:
                stop(gunicorn)
            if redis_server is not None:
                stop(redis_server)
            if not args.keep:
                drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
