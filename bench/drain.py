"""Backlog drain, side by side: EventFlow's worker against the seed design's BullMQ worker.

    .venv/bin/python bench/drain.py --peer PATH/TO/peer-node/start.sh [--events 50000] [--rounds 3]

Both stacks get the same backlog of N queued no-op events, on the same PostgreSQL, and are timed
until every row is PROCESSED; rounds alternate which stack goes first, and the medians and their
ratio are printed. Each stack has its own database and its own private redis-server (started on
a free port, without persistence), so nothing else's data is touched.

- EventFlow: `flask --app wsgi worker --workers 2 --processes`, already running and idle (as in
  bench/process.py). The N rows are inserted first, then all N messages are pushed to the queue
  at once (`EventQueue.enqueue`); the clock starts at that push and stops at the last
  `processed_at`. Each run checks that every event was PROCESSED after exactly one attempt.
- The peer: its `start.sh server` (which recreates its database) is fed N events over HTTP
  (`POST /api/v1/events`, keep-alive connections), then `start.sh worker` is started and drains
  them. Its worker's start-up is not counted: its clock runs from the first to the last
  `processed_at`. Every row must end PROCESSED.

Each line also gives the CPU microseconds per event of each stack's worker processes, its
PostgreSQL backends and its Redis (the peer's worker figure includes Node's start-up), and the
machine's load: on a shared machine the CPU per event is the steadier figure. The peer needs
Node.js and npm (`start.sh` runs `npm install` itself).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis
from harness import (
    app_env,
    drop_database,
    fail,
    flask,
    free_port,
    recreate_database,
    start_redis,
    start_worker,
    stop,
)
from process import (
    EVENT_TYPE,
    SEED_SQL,
    CpuMeter,
    check,
    descendants,
    reset,
    rows,
    scalar,
    wait_for_heartbeats,
)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_drainbench"
PEER_DB = "eventflow_peerbench"
PUSH_CONNECTIONS = 8


@dataclass
class Drain:
    events: int
    seconds: float
    cpu: dict[str, float]
    load: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds

    def line(self, label: str) -> str:
        cpu = ", ".join(f"{name} {1e6 * s / self.events:.0f}" for name, s in self.cpu.items())
        return (
            f"{label:>10}  {self.per_second:7.0f} events/s  {self.events} events in "
            f"{self.seconds:6.2f} s  CPU us/event: {cpu}  load {self.load:.1f}"
        )


def backend_pids(conn) -> list[int]:
    """The PostgreSQL backends serving conn's database."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    return [r[0] for r in rows(conn, sql)]


def wait_until_processed(conn, events: int, what: str) -> None:
    deadline = time.monotonic() + 1200
    while scalar(conn, "SELECT count(*) FROM events WHERE status = 'PROCESSED'") < events:
        if time.monotonic() > deadline:
            fail(f"{what}: events still unprocessed after 20 minutes")
        time.sleep(0.2)


class EventFlow:
    """EventFlow's worker, its database and Redis; one drain per call."""

    def __init__(self, database_url: str, tmp: Path):
        recreate_database(database_url)
        self.database_url = database_url
        self.redis_proc, redis_url = start_redis(tmp / "eventflow-redis.log")
        env = app_env(database_url, redis_url, str(tmp))
        flask(env, "db", "upgrade")
        os.environ.update(env)
        from eventflow import create_app
        from eventflow.users import create_user

        self.app = create_app()
        with self.app.app_context():
            self.user_id = create_user("bench@example.com", "bench-password-123").id
        self.conn = psycopg2.connect(database_url)
        self.conn.autocommit = True
        self.store = redis.Redis.from_url(redis_url)
        self.log_path = tmp / "eventflow-worker.log"
        self.worker = start_worker(env, 2, self.log_path)
        wait_for_heartbeats(self.conn, self.worker, 2, self.log_path)

    def drain(self, events: int) -> Drain:
        from eventflow.tasks.queue import get_queue

        reset(self.conn, self.store)
        ids = []
        for start in range(0, events, 1000):
            ids += [
                uuid.UUID(r[0])
                for r in rows(
                    self.conn,
                    SEED_SQL,
                    str(self.user_id),
                    EVENT_TYPE,
                    start,
                    min(start + 1000, events) - 1,
                )
            ]
        meter = CpuMeter(
            {
                "workers": lambda: descendants(self.worker.pid),
                "postgres": lambda: backend_pids(self.conn),
                "redis": lambda: [self.redis_proc.pid],
            }
        )
        with self.app.app_context():
            started = time.time()
            if not get_queue().enqueue(ids, ingested=len(ids)):
                fail("could not enqueue")
        wait_until_processed(self.conn, events, "EventFlow")
        cpu = meter.used()
        finished = scalar(self.conn, "SELECT extract(epoch FROM max(processed_at)) FROM events")
        check(self.conn, self.store, events)
        return Drain(events, float(finished) - started, cpu, os.getloadavg()[0])

    def close(self) -> None:
        self.conn.close()
        stop(self.worker)
        stop(self.redis_proc)
        drop_database(self.database_url)


class Peer:
    """The seed design's Node stack: its server to queue a backlog, its worker to drain it."""

    def __init__(self, start_sh: Path, database_url: str, tmp: Path):
        self.start_sh = start_sh
        self.redis_proc, redis_url = start_redis(tmp / "peer-redis.log")
        self.store = redis.Redis.from_url(redis_url)
        self.port = free_port()
        self.env = dict(
            os.environ,
            PEER_DB=PEER_DB,
            PEER_PORT=str(self.port),
            PEER_REDIS_PORT=str(self.store.connection_pool.connection_kwargs["port"]),
        )
        self.tmp = tmp
        self.server = subprocess.Popen(
            [str(start_sh), "server"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.token = self._read_token()
        # Keep reading its output, so that a chatty server never blocks on a full pipe.
        threading.Thread(target=self.server.stdout.read, daemon=True).start()
        self._wait_for_server()
        self.database_url = urlunsplit(urlsplit(database_url)._replace(path=f"/{PEER_DB}"))
        self.conn = psycopg2.connect(self.database_url)
        self.conn.autocommit = True

    def _read_token(self) -> str:
        deadline = time.monotonic() + 300  # the first start runs npm install
        for line in self.server.stdout:
            if line.startswith("token: "):
                return line.split()[1]
            if time.monotonic() > deadline:
                break
        fail(f"the peer server did not start (exit {self.server.poll()})")

    def _wait_for_server(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http_get = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                http_get.request("GET", "/health")
                if http_get.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        fail("the peer server does not answer /health")

    def _push(self, count: int, errors: list) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            for n in range(count):
                body = json.dumps({"type": EVENT_TYPE, "payload": {"n": n}})
                connection.request("POST", "/api/v1/events", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status != 202:
                    errors.append(response.status)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    def queue_backlog(self, events: int) -> float:
        """POST N events; return the seconds it took (the peer's ingest, for information)."""
        with self.conn.cursor() as cur:
            cur.execute("TRUNCATE events")
        self.store.flushdb()
        errors: list = []
        shares = [
            events // PUSH_CONNECTIONS + (i < events % PUSH_CONNECTIONS)
            for i in range(PUSH_CONNECTIONS)
        ]
        started = time.monotonic()
        threads = [threading.Thread(target=self._push, args=(n, errors)) for n in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        queued = self.store.llen("bull:events:wait")
        stored = scalar(self.conn, "SELECT count(*) FROM events")
        if errors or queued != events or stored != events:
            fail(
                f"peer backlog: {len(errors)} errors (first: {errors[:1]}), {queued} jobs, "
                f"{stored} rows for {events}"
            )
        return seconds

    def drain(self, events: int) -> Drain:
        log = open(self.tmp / "peer-worker.log", "wb")  # noqa: SIM115 (closed below)
        worker = subprocess.Popen(
            [str(self.start_sh), "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        meter = CpuMeter(
            {
                "workers": lambda: descendants(worker.pid),
                "postgres": lambda: backend_pids(self.conn),
                "redis": lambda: [self.redis_proc.pid],
            }
        )
        try:
            wait_until_processed(self.conn, events, "peer")
            cpu = meter.used()
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait()
            log.close()
        first, last = rows(
            self.conn,
            "SELECT extract(epoch FROM min(processed_at)), extract(epoch FROM max(processed_at)) "
            "FROM events",
        )[0]
        return Drain(events, float(last) - float(first), cpu, os.getloadavg()[0])

    def close(self) -> None:
        self.conn.close()
        os.killpg(self.server.pid, signal.SIGTERM)
        self.server.wait()
        stop(self.redis_proc)
        drop_database(self.database_url)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", required=True, type=Path, help="the peer's start.sh")
    parser.add_argument("--events", type=int, default=50000, help="backlog per drain")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    if not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file")
    if not 1 <= args.rounds <= 20 or not 1000 <= args.events <= 1_000_000:
        parser.error("--rounds must be 1-20 and --events 1,000-1,000,000")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/drain.py: terminated"))
    ours = peer = None
    with tempfile.TemporaryDirectory(prefix="eventflow-drainbench-") as tmp:
        try:
            ours = EventFlow(args.database_url, Path(tmp))
            peer = Peer(args.peer.resolve(), args.database_url, Path(tmp))
            print(f"{args.events} queued {EVENT_TYPE} events per drain, {args.rounds} rounds")
            results: dict[str, list[Drain]] = {"eventflow": [], "peer": []}
            for n in range(1, args.rounds + 1):
                for name in ("eventflow", "peer") if n % 2 else ("peer", "eventflow"):
                    if name == "peer":
                        pushed = peer.queue_backlog(args.events)
                        print(f"{'':>10}  (peer backlog queued over HTTP in {pushed:.1f} s)")
                        drained = peer.drain(args.events)
                    else:
                        drained = ours.drain(args.events)
                    results[name].append(drained)
                    print(drained.line(f"{name} {n}"))
            ours_median = statistics.median(d.per_second for d in results["eventflow"])
            peer_median = statistics.median(d.per_second for d in results["peer"])
            ratios = [
                a.per_second / b.per_second
                for a, b in zip(results["eventflow"], results["peer"], strict=True)
            ]
            print(
                f"\nmedian: EventFlow {ours_median:.0f} events/s, peer {peer_median:.0f} "
                f"events/s, ratio {ours_median / peer_median:.2f} "
                f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        finally:
            if ours is not None:
                ours.close()
            if peer is not None:
                peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
