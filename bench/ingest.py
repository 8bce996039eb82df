"""Ingest benchmark: `POST /api/v1/events` through gunicorn on PostgreSQL + Redis, driven by wrk.

    .venv/bin/python bench/ingest.py [--runs 5] [--duration 10] [--connections 32]

Needs wrk on PATH (Debian/Ubuntu: `apt-get install -y wrk`; macOS: `brew install wrk`); it is not
a Python package, so requirements.txt cannot install it. PostgreSQL and Redis must be running.

What it does: recreates its own database (`eventflow_bench`) and empties Redis database 12,
runs `flask db upgrade`, creates a user, starts `gunicorn -c gunicorn.conf.py wsgi:app` on a free
port with EVENTFLOW_ENV=production, logs in, warms up, then runs wrk (bench/ingest.lua) several
times and prints req/s and latency per run and the median. No worker runs, so every event stays
PENDING: this measures ingest alone. Afterwards it checks that nothing was silently lost: every
202 wrk saw is a row in `events` and a message on the queue. Everything it started is stopped,
and its database and Redis database are dropped/emptied again at the end.

gunicorn's shape comes from gunicorn.conf.py and its environment, e.g.
`GUNICORN_WORKERS=3 GUNICORN_THREADS=8 .venv/bin/python bench/ingest.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis
from harness import (
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

LUA_SCRIPT = ROOT / "bench" / "ingest.lua"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
QUEUE_KEY = "huey.redis.eventflow"  # RedisHuey("eventflow")'s list, see eventflow/backend.py
USER_EMAIL = "bench@example.com"
USER_PASSWORD = "bench-password-123"


@dataclass
class Run:
    requests: int
    unanswered: int  # sent, but no response before wrk stopped
    seconds: float
    accepted: int  # 202 responses
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu: dict[str, float] | None = None  # CPU ms per 202, by process group (Linux only)

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds

    def line(self, label: str) -> str:
        return (
            f"{label:>8}  {self.per_second:8.0f} events/s  p50 {self.p50_ms:6.1f} ms  "
            f"p90 {self.p90_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms  max {self.max_ms:7.1f} ms  "
            f"202s {self.accepted:7d}  non-2xx {self.non_2xx}  socket errors {self.socket_errors}"
            + (f"\n{'':>10}CPU ms/event: {self.cpu_line()}" if self.cpu else "")
        )

    def cpu_line(self) -> str:
        return self.cpu_line_of(self.cpu or {})

    @staticmethod
    def cpu_line_of(cpu: dict[str, float]) -> str:
        return "  ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())


class CpuMeter:
    """CPU time per event: gunicorn, the bench database's backends, wrk, and everything else.

    `rest` is Redis (unless it is one of `servers`), PostgreSQL's WAL writer and anything else
    running, other people's processes included: on a shared machine it shows how much of the
    cores the figures had.
    Linux only (/proc); elsewhere the figures are left out.

    `servers` is gunicorn's pid, or the root pid of each server to measure by name (e.g.
    {"nginx": ..., "gunicorn 1": ..., "redis": ...}); a server counts with all its descendants.
    """

    def __init__(self, servers: int | dict[str, int], database_url: str):
        self.servers = {"gunicorn": servers} if isinstance(servers, int) else dict(servers)
        self.database = urlsplit(database_url).path.lstrip("/")
        self.admin_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        # Backend pids only mean something here when PostgreSQL runs on this machine.
        local = urlsplit(database_url).hostname in (None, "127.0.0.1", "localhost", "::1")
        self.enabled = local and Path("/proc/stat").exists()

    def _process_seconds(self, pid: int) -> tuple[float, int]:
        """(user + system CPU seconds, parent pid) of one process."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0, -1
        return (int(fields[11]) + int(fields[12])) / self.tick, int(fields[1])

    def _backend_pids(self) -> list[int]:
        conn = psycopg2.connect(self.admin_url)
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))
            pids = [row[0] for row in cur.fetchall()]
        conn.close()
        return pids

    def sample(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        children: dict[int, list[int]] = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                children.setdefault(self._process_seconds(int(p.name))[1], []).append(int(p.name))

        def tree_seconds(root: int) -> float:
            pids, seconds = [root], 0.0
            while pids:
                pid = pids.pop()
                seconds += self._process_seconds(pid)[0]
                pids.extend(children.get(pid, []))
            return seconds

        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / self.tick  # all but idle and iowait
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        return {
            **{name: tree_seconds(pid) for name, pid in self.servers.items()},
            "postgres": sum(self._process_seconds(p)[0] for p in self._backend_pids()),
            "wrk": waited.ru_utime + waited.ru_stime,
            "busy": busy,
        }

    @staticmethod
    def per_event(before: dict, after: dict, events: int) -> dict[str, float] | None:
        if not before or not events:
            return None
        spent = {name: after[name] - before[name] for name in before}
        busy = spent.pop("busy")
        spent["rest"] = busy - sum(spent.values())
        return {name: 1000 * seconds / events for name, seconds in spent.items()}


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        fail(
            "wrk is not installed. Install it with `apt-get install -y wrk` (Debian/Ubuntu) "
            "or `brew install wrk` (macOS), then run this again."
        )
    return wrk


def login(base_url: str) -> str:
    body = json.dumps({"email": USER_EMAIL, "password": USER_PASSWORD}).encode()
    request = urllib.request.Request(
        f"{base_url}/api/v1/auth/login", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["access_token"]


def run_wrk(
    wrk: str, url: str, token: str, seconds: float, args: argparse.Namespace, meter: CpuMeter
) -> Run:
    command = [
        wrk,
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    before = meter.sample()
    result = subprocess.run(
        command,
        env={**os.environ, "EVENTFLOW_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        fail(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    data = json.loads(lines[-1][len("RESULT ") :])
    statuses = {int(k): v for k, v in data["statuses"].items()}
    cpu = CpuMeter.per_event(before, meter.sample(), statuses.get(202, 0))
    latency = data["latency_us"]
    return Run(
        requests=data["requests"],
        unanswered=data["sent"] - sum(statuses.values()),
        seconds=data["duration_us"] / 1e6,
        accepted=statuses.get(202, 0),
        non_2xx=sum(n for status, n in statuses.items() if not 200 <= status < 300),
        socket_errors=sum(data["errors"].values()) - data["errors"]["status"],
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        cpu=cpu,
    )


def check_nothing_lost(
    database_url: str, redis_url: str, runs: list[Run], queue_key: str = QUEUE_KEY
) -> bool:
    """Every 202 is a row and a queue message; beyond those only unanswered requests may be."""
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        rows = cur.fetchone()[0]
    conn.close()
    queued = redis.Redis.from_url(redis_url).llen(queue_key)
    accepted = sum(r.accepted for r in runs)
    # wrk stops on the clock: requests still in flight then are committed but never counted.
    unanswered = sum(r.unanswered for r in runs)
    print(
        f"\nchecks: 202s seen by wrk {accepted} + requests unanswered when wrk stopped "
        f"{unanswered}; rows in events {rows}; queue messages {queued}"
    )
    # An unanswered request may have been committed, or never have reached the server.
    errors = sum(r.socket_errors for r in runs)
    ok = accepted <= rows <= accepted + unanswered + errors
    ok = ok and queued == rows
    print("  OK: nothing lost" if ok else "  FAILED: rows, 202s and queue messages disagree")
    return ok


def summarize(runs: list[Run], args: argparse.Namespace) -> None:
    shape = ", ".join(
        f"{name}={os.environ[name]}"
        for name in ("GUNICORN_WORKERS", "GUNICORN_THREADS")
        if name in os.environ
    )
    print(
        f"\nmedian of {len(runs)} runs ({args.duration:g} s each, {args.connections} connections, "
        f"gunicorn.conf.py{' with ' + shape if shape else ' defaults'}):"
    )
    print(
        f"  {statistics.median(r.per_second for r in runs):.0f} events/s, "
        f"p50 {statistics.median(r.p50_ms for r in runs):.1f} ms, "
        f"p99 {statistics.median(r.p99_ms for r in runs):.1f} ms"
    )
    if all(r.cpu for r in runs):
        cpu = {name: statistics.median(r.cpu[name] for r in runs) for name in runs[0].cpu}
        print(f"  CPU ms/event: {Run.cpu_line_of(cpu)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120:
        parser.error("--runs must be 1-20 and --duration 1-120 seconds")
    return args


def main() -> int:
    args = parse_args()
    wrk = require_wrk()
    recreate_database(args.database_url)
    queue = redis.Redis.from_url(args.redis_url)
    queue.flushdb()  # our own database number, never FLUSHALL
    gunicorn = None
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-") as tmp:
        # The token must outlive the longest bench.
        env = app_env(
            args.database_url, args.redis_url, tmp, JWT_ACCESS_TOKEN_EXPIRES_SECONDS="3600"
        )
        try:
            flask(env, "db", "upgrade")
            flask(env, "users", "create", USER_EMAIL, "--password", USER_PASSWORD)
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base_url = f"http://127.0.0.1:{port}"
            token = login(base_url)
            url = f"{base_url}/api/v1/events"
            print(f"gunicorn (pid {gunicorn.pid}) on {base_url}")
            print(f"wrk -t{args.wrk_threads} -c{args.connections} -s bench/ingest.lua {url}")
            meter = CpuMeter(gunicorn.pid, args.database_url)
            runs = [run_wrk(wrk, url, token, args.warmup, args, meter)]
            print(runs[0].line("warm-up"))
            for n in range(1, args.runs + 1):
                runs.append(run_wrk(wrk, url, token, args.duration, args, meter))
                print(runs[-1].line(f"run {n}"))
            stop(gunicorn)
            summarize(runs[1:], args)
            ok = check_nothing_lost(args.database_url, args.redis_url, runs)
        finally:
            if gunicorn is not None:
                stop(gunicorn)
            queue.flushdb()
            drop_database(args.database_url)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
