"""Console at scale: every list, filter and dashboard page against a database of N events.

    .venv/bin/python bench/console_scale.py [--events 10000000] [--requests 20] [--keep]

PostgreSQL must be running; redis-server must be on PATH (a private one is started on a free
port). CONTRACT section 10 "Scale": with 10M events (1M of them waiting or failed) every list,
filter and dashboard page answers in under 200 ms p95, and the live feed's cost does not grow
with the number of events.

What it does: recreates its own database (`eventflow_console`), runs `flask db upgrade`, then
loads N events with COPY (indexes and the count triggers set aside meanwhile, then rebuilt, the
counts filled once, VACUUM ANALYZE): 90 % PROCESSED, 5 % PENDING, 1 % RETRYING, 4 % FAILED
(each with 3 failed attempts and a traceback; a RETRYING one with 1), over 30 days, six
types, 50 users of uneven activity (the busiest has 22 % of the events, the quietest 0.4 %),
payloads with a nested customer id (20,000 customers) and a list of items. Every failure is
in one of ERRORS' groups, as the workers would group it (eventflow/tasks/fingerprints.py):
the groups' counts, types and hours are filled from the attempts, and each waiting-to-retry
or failed event carries its group. Plus AUDIT_ENTRIES audit entries over the same 30 days.
Then it starts gunicorn (production settings), logs in an admin over the API and through the
dashboard's form, and times `--requests` requests (after 2 warm-ups) of each line of CHECKS,
printing p50/p95 per line and marking those over 200 ms p95. It also times the `stats`
snapshot in-process (and its size) and measures the CPU of this database's PostgreSQL backends
for 30 s with no dashboard open, then 30 s with one open over Socket.IO.

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
from typing import Any, NamedTuple

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
    "created_at, processed_at, next_attempt_at, error_group_id"
)
# The failures, by error group: (error, the handler function in its traceback, share).
ERRORS = [
    ("ValueError: customer 4411 has no default payment method", "charge", 0.45),
    ("TimeoutError: upstream timed out after 30 s", "call_upstream", 0.25),
    ("KeyError: 'items'", "order_total", 0.15),
    ("PermanentError: invoice 88213 already sent", "send_invoice", 0.10),
    ("ConnectionError: connection refused by 10.0.4.17:5432", "store", 0.05),
]
AUDIT_ENTRIES = 50_000


def traceback_of(error: str, function: str) -> str:
    """A traceback as the workers store it, its innermost frame in handler code."""
    return (
        "Traceback (most recent call last):\n"
        f'  File "/srv/app/handlers.py", line 12, in {function}\n'
        "    raise\n"
        f"{error}"
    )


class Check(NamedTuple):
    """One timed request: GET `path`, or POST `body` as JSON to it."""

    name: str
    kind: str  # "api" (bearer token) | "page" (dashboard session)
    path: str
    body: dict[str, Any] | None = None


def dry_run(event_filter: dict[str, Any]) -> dict[str, Any]:
    return {"action": "replay", "dry_run": True, "filter": event_filter}


# What to time. The {names} in paths and bodies are filled by samples().
DAY = "created_after={day_start}&created_before={day_end}"
ONE_FIELD = "payload.customer.id={customer}"
TWO_FIELDS = "payload.customer.id={customer}&payload.source=web"
CHECKS = [
    Check("API /events", "api", "/api/v1/events"),
    Check("API /events page 100 of 100", "api", "/api/v1/events?page=100&limit=100"),
    Check("API /events cursor", "api", "/api/v1/events?cursor=&limit=100"),
    Check("API /events status=FAILED", "api", "/api/v1/events?status=FAILED"),
    Check("API /events status=PENDING", "api", "/api/v1/events?status=PENDING"),
    Check("API /events type", "api", "/api/v1/events?type={type}"),
    Check("API /events type+status", "api", "/api/v1/events?type={type}&status=RETRYING"),
    Check("API /events user", "api", "/api/v1/events?user={user}"),
    Check("API /events user+status", "api", "/api/v1/events?user={user}&status=FAILED"),
    Check("API /events quiet user", "api", "/api/v1/events?user={quiet}"),
    Check("API /events quiet user+status", "api", "/api/v1/events?user={quiet}&status=FAILED"),
    Check("API /events created (a day)", "api", f"/api/v1/events?{DAY}"),
    Check("API /events created (a day)+status", "api", f"/api/v1/events?{DAY}&status=FAILED"),
    Check("API /events created_after (1 h)", "api", "/api/v1/events?created_after={hour_ago}"),
    Check("API /events q (8-digit prefix)", "api", "/api/v1/events?q={prefix}"),
    Check("API /events error_group", "api", "/api/v1/events?error_group={group}"),
    Check("API /events error_group+type", "api", "/api/v1/events?error_group={group}&type={type}"),
    Check("API /events payload (1 field)", "api", f"/api/v1/events?{ONE_FIELD}"),
    Check("API /events payload (2 fields)", "api", f"/api/v1/events?{TWO_FIELDS}"),
    Check("API /events payload (common value)", "api", "/api/v1/events?payload.source=ios"),
    Check("API /events/{id}", "api", "/api/v1/events/{failed}"),
    Check("API /dlq", "api", "/api/v1/dlq"),
    Check("API /dlq type", "api", "/api/v1/dlq?type={type}"),
    Check("API /error-groups", "api", "/api/v1/error-groups"),
    Check("API /error-groups/{id}", "api", "/api/v1/error-groups/{group}"),
    Check("API /audit", "api", "/api/v1/audit"),
    Check("API /audit action", "api", "/api/v1/audit?action=bulk_discard"),
    Check(
        "API bulk dry run, payload",
        "api",
        "/api/v1/bulk-actions",
        dry_run({"payload": {"customer.id": "{customer}"}}),
    ),
    Check("API bulk dry run, type", "api", "/api/v1/bulk-actions", dry_run({"type": "{type}"})),
    Check(
        "API bulk dry run, group",
        "api",
        "/api/v1/bulk-actions",
        dry_run({"error_group": "{group}"}),
    ),
    Check("/metrics", "api", "/metrics"),
    Check("page Overview", "page", "/dashboard/"),
    Check("page Events", "page", "/dashboard/events"),
    Check("page Events status+type", "page", "/dashboard/events?status=FAILED&type={type}"),
    Check("page Events user", "page", "/dashboard/events?user={user}"),
    Check("page Events user+status", "page", "/dashboard/events?user={user}&status=FAILED"),
    Check("page Events created (a day)", "page", f"/dashboard/events?{DAY}"),
    Check("page Events q", "page", "/dashboard/events?q={prefix}"),
    Check("page Events error_group", "page", "/dashboard/events?error_group={group}"),
    Check("page Events payload (2 fields)", "page", f"/dashboard/events?{TWO_FIELDS}"),
    Check("page Event detail", "page", "/dashboard/events/{failed}"),
    Check("page DLQ", "page", "/dashboard/dlq"),
    Check("page DLQ type", "page", "/dashboard/dlq?type={type}"),
    Check("page Errors", "page", "/dashboard/errors"),
    Check("page Audit", "page", "/dashboard/audit"),
    Check("page bulk preview, type", "page", "/dashboard/bulk/new?action=replay&type={type}"),
]


# ---------------------------------------------------------------- the data


def event_rows(
    n: int, user_ids: list[str], group_ids: list[int], rng: random.Random
) -> Iterator[tuple[str, ...]]:
    """N events as COPY text rows (oldest first); a failure's error is one of ERRORS'."""
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    step = timedelta(days=30) / n
    weights = [1 / (k + 1) for k in range(len(user_ids))]  # a few busy users, many quiet ones
    users = rng.choices(user_ids, weights, k=n)
    statuses = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=n)
    errors = rng.choices(range(len(ERRORS)), [share for *_, share in ERRORS], k=n)
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
        failing = status in ("FAILED", "RETRYING")
        yield (
            str(uuid.uuid4()),
            users[i],
            event_type,
            json.dumps(payload, separators=(",", ":")),
            status,
            {"PROCESSED": "1", "FAILED": "3", "RETRYING": "1"}.get(status, "0"),
            "0",
            '{"ok":true}' if processed else "\\N",
            ERRORS[errors[i]][0] if failing else "\\N",
            created.isoformat(),
            (created + timedelta(milliseconds=40)).isoformat() if processed else "\\N",
            created.isoformat() if status in ("PENDING", "RETRYING") else "\\N",
            str(group_ids[errors[i]]) if failing else "\\N",
        )


class RowStream(io.RawIOBase):
    """A file-like object over generated rows, for COPY FROM STDIN without a temporary file."""

    def __init__(self, rows: Iterator[tuple[str, ...]], failing: list[tuple[str, ...]]):
        self.rows = rows
        self.failing = failing  # the FAILED and RETRYING rows, for their attempts
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def]
        while len(self.buffer) < len(target):
            chunk = []
            for row in self.rows:
                chunk.append("\t".join(row))
                if row[4] in ("FAILED", "RETRYING"):
                    self.failing.append((row[0], row[4], row[8], row[9], row[12]))
                if len(chunk) == 5000:
                    break
            if not chunk:
                break
            self.buffer += ("\n".join(chunk) + "\n").encode()
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


def insert_groups(cur: Any) -> list[int]:
    """ERRORS' groups, keyed as the workers key them; their counts are filled after the load."""
    from eventflow.tasks.fingerprints import fingerprint_text

    ids = []
    for error, function, _ in ERRORS:
        found = fingerprint_text(error, traceback_of(error, function))
        cur.execute(
            "INSERT INTO error_groups (fingerprint, exception, message, frame, status, count,"
            " first_seen, last_seen, sample_error, sample_traceback)"
            " VALUES (%s, %s, %s, %s, 'open', 0, now(), now(), %s, %s) RETURNING id",
            (
                found.digest,
                found.exception,
                found.message,
                found.frame,
                error,
                traceback_of(error, function),
            ),
        )
        ids.append(cur.fetchone()[0])
    return ids


def attempt_rows(failing: list[tuple[str, ...]]) -> io.StringIO:
    """3 failed attempts of each FAILED event, 1 of each RETRYING one, a minute apart."""
    tracebacks = {e: traceback_of(e, f).replace("\n", "\\n") for e, f, _ in ERRORS}
    rows = io.StringIO()
    for event_id, status, error, created, group in failing:
        first = datetime.fromisoformat(created)
        outcomes = ("retry", "retry", "failed") if status == "FAILED" else ("retry",)
        for number, outcome in enumerate(outcomes, 1):
            at = (first + timedelta(minutes=number - 1)).isoformat()
            rows.write(
                f"{event_id}\t{number}\tbench\t{at}\t{at}\t{outcome}\t{error}\t"
                f"{tracebacks[error]}\t{group}\n"
            )
    rows.seek(0)
    return rows


# The groups' figures from their attempts, as the workers keep them one failure at a time.
FILL_GROUPS = [
    "UPDATE error_groups g SET count = a.n, first_seen = a.first, last_seen = a.last"
    " FROM (SELECT error_group_id, count(*) AS n, min(started_at) AS first,"
    " max(started_at) AS last FROM event_attempts GROUP BY error_group_id) a"
    " WHERE a.error_group_id = g.id",
    "INSERT INTO error_group_types (group_id, type, count)"
    " SELECT a.error_group_id, e.type, count(*) FROM event_attempts a"
    " JOIN events e ON e.id = a.event_id GROUP BY 1, 2",
    "INSERT INTO error_group_hours (group_id, hour, count)"
    " SELECT error_group_id, date_trunc('hour', started_at), count(*)"
    " FROM event_attempts GROUP BY 1, 2",
]


def insert_audit_entries(cur: Any, rng: random.Random) -> None:
    """AUDIT_ENTRIES entries over 30 days, by the admin, of every kind of action."""
    from eventflow.audit import ACTIONS

    cur.execute("SELECT id, email FROM users WHERE email = %s", (ADMIN_EMAIL,))
    actor_id, actor = cur.fetchone()
    now = datetime.now(UTC)
    rows = io.StringIO()
    for k in range(AUDIT_ENTRIES):
        at = now - timedelta(days=30) * (1 - k / AUDIT_ENTRIES)
        action = rng.choice(list(ACTIONS))
        rows.write(f"{at.isoformat()}\t{actor_id}\t{actor}\t{action}\t{uuid.uuid4()}\t1\n")
    rows.seek(0)
    cur.copy_expert("COPY audit_log (at, actor_id, actor, action, target, count) FROM STDIN", rows)


def load(database_url: str, events: int) -> None:
    """Fill the empty, migrated database with users and N events (see the module docstring)."""
    rng = random.Random(42)
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '1GB'")  # index builds in memory, not on disk
        cur.execute("SELECT password_hash FROM users WHERE email = %s", (ADMIN_EMAIL,))
        (password_hash,) = cur.fetchone()
        user_ids = [str(uuid.uuid4()) for _ in range(USERS)]
        for k, user_id in enumerate(user_ids):
            cur.execute(
                "INSERT INTO users (id, email, password_hash, role, created_at, token_generation)"
                " VALUES (%s, %s, %s, 'user', now(), 0)",
                (user_id, f"customer-{k}@example.com", password_hash),
            )
        group_ids = insert_groups(cur)
        # Rebuilding the indexes once is far faster than keeping them up per row.
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
            "AND indexname NOT LIKE '%pkey' AND indexdef NOT LIKE '%UNIQUE%'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute("ALTER TABLE events DISABLE TRIGGER USER")
        # Emptied in this transaction, so COPY may write the rows frozen and all-visible:
        # VACUUM then need not rewrite the whole table, and index-only scans work at once.
        cur.execute("TRUNCATE events, event_attempts, bulk_action_items, payload_versions")
        failing: list[tuple[str, ...]] = []
        started = time.monotonic()
        cur.copy_expert(
            f"COPY events ({COLUMNS}) FROM STDIN WITH (FREEZE)",
            io.BufferedReader(
                RowStream(event_rows(events, user_ids, group_ids, rng), failing), 1 << 20
            ),
        )
        cur.copy_expert(
            "COPY event_attempts (event_id, number, worker, started_at, finished_at, outcome, "
            "error, traceback, error_group_id) FROM STDIN WITH (FREEZE)",
            attempt_rows(failing),
        )
        del failing
        insert_audit_entries(cur, rng)
        print(f"copied {events:,} events in {time.monotonic() - started:.0f} s", flush=True)
        for _, definition in indexes:
            cur.execute(definition)
        print(f"indexed in {time.monotonic() - started:.0f} s", flush=True)
        cur.execute("ALTER TABLE events ENABLE TRIGGER USER")
        cur.execute("DELETE FROM event_counts")
        cur.execute(
            "INSERT INTO event_counts (type, status, shard, count) "
            "SELECT type, status, 0, count(*) FROM events GROUP BY type, status"
        )
        for statement in FILL_GROUPS:
            cur.execute(statement)
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


def samples(database_url: str) -> dict[str, Any]:
    """What the CHECKS are filled with: the busiest and the quietest user, a type, a failed
    event and its id's first 8 hex digits, the largest error group, a customer, a day."""
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT email FROM users WHERE email IN (%s, %s) ORDER BY email",
            ("customer-0@example.com", f"customer-{USERS - 1}@example.com"),
        )
        user, quiet = (row[0] for row in cur.fetchall())
        cur.execute("SELECT id FROM events WHERE status = 'FAILED' LIMIT 1")
        (failed,) = cur.fetchone()
        cur.execute("SELECT id FROM error_groups ORDER BY count DESC LIMIT 1")
        (group,) = cur.fetchone()
    conn.close()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "user": user,
        "quiet": quiet,
        "type": TYPES[0],
        "failed": str(failed),
        "prefix": str(failed)[:8],
        "group": group,
        "customer": "c4242",
        "day_start": zulu(today - timedelta(days=10)),
        "day_end": zulu(today - timedelta(days=9)),
        "hour_ago": zulu(datetime.now(UTC) - timedelta(hours=1)),
    }


def zulu(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill(value: Any, values: dict[str, Any]) -> Any:
    """A check's body with its {names} filled: a whole "{name}" becomes the value itself."""
    if isinstance(value, dict):
        return {key: fill(item, values) for key, item in value.items()}
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return values[value[1:-1]]
    return value


# ---------------------------------------------------------------- the timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(fraction * len(ordered) + 0.5) - 1)]


def time_requests(
    session: requests.Session, url: str, count: int, body: dict[str, Any] | None = None
) -> list[float]:
    """Milliseconds of `count` GETs (POSTs of `body`) after 2 warm-ups; any status but 200
    stops the bench."""
    timings = []
    method = "GET" if body is None else "POST"
    for n in range(count + 2):
        started = time.perf_counter()
        response = session.request(method, url, json=body, timeout=60, allow_redirects=False)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            fail(f"{method} {url} answered {response.status_code}: {response.text[:200]}")
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
    parser.add_argument(
        "--only", help="time only the checks whose name matches this regex (no snapshot, no feed)"
    )
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
            print(f"{'':38} {'p50 ms':>8} {'p95 ms':>8}")
            over = []
            for name, kind, path, body in CHECKS:
                if args.only and not re.search(args.only, name):
                    continue
                url = base_url + path.format(**values)
                timings = time_requests(sessions[kind], url, args.requests, fill(body, values))
                p95 = percentile(timings, 0.95)
                mark = "  over" if p95 > BUDGET_MS else ""
                print(f"{name:38} {statistics.median(timings):8.1f} {p95:8.1f}{mark}", flush=True)
                if mark:
                    over.append(name)
            if not args.only:
                timings, size = time_snapshot(env, args.requests)
                print(
                    f"{'stats snapshot (in-process)':38} {statistics.median(timings):8.1f} "
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
