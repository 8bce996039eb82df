"""Ingest side by side: EventFlow against the seed design's own Node stack ("the peer").

    .venv/bin/python bench/compare_peer.py [--rounds 5] [--peer-dir ../shared/bench/peer-node]

Run by hand, never in CI. Needs wrk, redis-server, node and npm on PATH, and PostgreSQL on
127.0.0.1 with the `postgres` user and no password (the peer's start.sh connects that way).
--peer-dir is the directory of the peer's start.sh (default: shared/bench/peer-node beside this
repository's directory); the peer installs its pinned npm packages on its first start.

What it does, on one machine in one run: starts a private redis-server (no persistence) for
both sides, so the same Redis serves both and no other Redis is touched (EventFlow uses its
database 12, the peer's BullMQ its database 0). Starts EventFlow at its default shape as
bench/ingest.py does (its own database, `flask db upgrade`, a user, `gunicorn -c
gunicorn.conf.py wsgi:app` with EVENTFLOW_ENV=production, a token from logging in) and the peer
(`start.sh server`: its own database, two cluster processes, a token). No worker runs on either
side, so this is ingest alone. Both get the same wrk command and body (bench/ingest.lua):
a warm-up of each (V8 runs its first seconds at half speed), then rounds alternating EventFlow,
peer. It prints every run's events/s, latency and CPU ms per event (each side's server with its
child processes, its database's PostgreSQL backends, Redis, wrk and the rest of the machine),
the medians, and the median over rounds of the ratio EventFlow/peer. Then it checks that
nothing was lost on either side: every 202 is a row in `events` and a message on the queue.
Everything it started is stopped and both databases dropped, also on Ctrl-C or a failure.
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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from harness import (
    ROOT,
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
from ingest import (
    QUEUE_KEY,
    USER_EMAIL,
    USER_PASSWORD,
    CpuMeter,
    Run,
    check_nothing_lost,
    login,
    require_wrk,
    run_wrk,
)

DEFAULT_PEER_DIR = ROOT.parent / "shared" / "bench" / "peer-node"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_peerbench"
PEER_DATABASE = "eventflow_peerbench_node"
# start.sh and server.js connect this way; only the database name is theirs to choose.
PEER_DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{PEER_DATABASE}"
PEER_QUEUE_KEY = "bull:events:wait"  # BullMQ's list of waiting jobs of the queue "events"


@dataclass
class Side:
    name: str
    url: str
    token: str
    meter: CpuMeter
    database_url: str
    redis_url: str
    queue_key: str
    runs: list[Run] = field(default_factory=list)  # the warm-up, then one per round

    def measure(self, wrk: str, seconds: float, args: argparse.Namespace, label: str) -> None:
        self.runs.append(run_wrk(wrk, self.url, self.token, seconds, args, self.meter))
        print(self.runs[-1].line(f"{self.name:>9} {label}"))

    @staticmethod
    def servers_ms(run: Run) -> float:
        """Server-side CPU ms per event: the server, its PostgreSQL backends and Redis."""
        return sum(ms for name, ms in (run.cpu or {}).items() if name not in ("wrk", "rest"))


def with_db(url: str, db: int | str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def start_peer(peer_dir: Path, redis_url: str, log_path: Path) -> tuple[subprocess.Popen, str, str]:
    """Start `start.sh server`: (process, base URL, bearer token) once it answers /health."""
    port = free_port()
    env = {
        **os.environ,
        "PEER_DB": PEER_DATABASE,
        "PEER_PORT": str(port),
        "PEER_REDIS_PORT": str(urlsplit(redis_url).port),
    }
    log = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [str(peer_dir / "start.sh"), "server"],
        cwd=peer_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop_peer ends the cluster with it
    )
    deadline = time.monotonic() + 600  # the first start runs `npm install`
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                fail(f"the peer exited:\n{log_path.read_text(errors='replace')}")
            tokens = [
                line.split(":", 1)[1].strip()
                for line in log_path.read_text(errors="replace").splitlines()
                if line.startswith("token:")
            ]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                    if reply.status == 200 and tokens:
                        return proc, f"http://127.0.0.1:{port}", tokens[0]
            except OSError:
                pass
            time.sleep(0.2)
        fail(f"the peer did not answer /health in 10 min:\n{log_path.read_text(errors='replace')}")
    except BaseException:  # also Ctrl-C or SIGTERM meanwhile: the caller has no handle on it
        stop_peer(proc)
        raise


def stop_peer(proc: subprocess.Popen) -> None:
    """SIGTERM the peer's process group (start.sh execs node; its cluster workers share it)."""
    if proc.returncode is not None:
        return  # stopped already
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            os.killpg(proc.pid, 0)  # a cluster worker still there?
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        time.sleep(0.5)


def summarize(sides: list[Side], args: argparse.Namespace) -> None:
    rounds = len(sides[0].runs) - 1
    print(f"\nmedian of {rounds} rounds ({wrk_command(args)}, the same body for both):")
    for side in sides:
        runs = side.runs[1:]
        line = (
            f"  {side.name:>9}  {statistics.median(r.per_second for r in runs):6.0f} events/s  "
            f"p50 {statistics.median(r.p50_ms for r in runs):6.1f} ms  "
            f"p99 {statistics.median(r.p99_ms for r in runs):6.1f} ms"
        )
        if all(r.cpu for r in runs):
            cpu = {name: statistics.median(r.cpu[name] for r in runs) for name in runs[0].cpu}
            servers = statistics.median(side.servers_ms(r) for r in runs)
            line += f"\n{'':13}CPU ms/event: {Run.cpu_line_of(cpu)}  (server side {servers:.2f})"
        print(line)
    ours, peer = (side.runs[1:] for side in sides)
    ratios = [a.per_second / b.per_second for a, b in zip(ours, peer, strict=True)]
    print(
        f"  EventFlow/peer: {statistics.median(ratios):.2f} events/s "
        f"(median of the rounds' ratios: {' · '.join(f'{r:.2f}' for r in ratios)})"
    )
    if all(r.cpu for r in ours + peer):
        ours_ms, peer_ms = (statistics.median(map(Side.servers_ms, runs)) for runs in (ours, peer))
        print(f"  EventFlow/peer: {ours_ms / peer_ms:.2f} server-side CPU per event")


def wrk_command(args: argparse.Namespace) -> str:
    return f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s -s bench/ingest.lua"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of A B (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of warm-up per side")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--peer-dir", type=Path, default=DEFAULT_PEER_DIR, help="directory of the peer's start.sh"
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="EventFlow's")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds must be 1-20 and --duration 1-120 seconds")
    args.peer_dir = args.peer_dir.resolve()
    if not (args.peer_dir / "start.sh").is_file():
        parser.error(f"no start.sh in {args.peer_dir} (see --peer-dir)")
    return args


def main() -> int:
    args = parse_args()
    wrk = require_wrk()
    # A plain `kill` must still stop everything and drop the databases (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/compare_peer.py: terminated"))
    redis_proc = gunicorn = peer = None
    ok = False
    with tempfile.TemporaryDirectory(prefix="eventflow-peerbench-") as tmp:
        try:
            redis_proc, redis_url = start_redis(Path(tmp) / "redis.log")
            eventflow_redis_url = with_db(redis_url, 12)
            recreate_database(args.database_url)
            # The token must outlive the longest bench.
            env = app_env(
                args.database_url, eventflow_redis_url, tmp, JWT_ACCESS_TOKEN_EXPIRES_SECONDS="7200"
            )
            flask(env, "db", "upgrade")
            flask(env, "users", "create", USER_EMAIL, "--password", USER_PASSWORD)
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base = f"http://127.0.0.1:{port}"
            print(f"starting the peer from {args.peer_dir} (its first start runs npm install)")
            peer, peer_base, peer_token = start_peer(
                args.peer_dir, redis_url, Path(tmp) / "peer.log"
            )
            sides = [
                Side(
                    "eventflow",
                    f"{base}/api/v1/events",
                    login(base),
                    CpuMeter(
                        {"gunicorn": gunicorn.pid, "redis": redis_proc.pid}, args.database_url
                    ),
                    args.database_url,
                    eventflow_redis_url,
                    QUEUE_KEY,
                ),
                Side(
                    "peer",
                    f"{peer_base}/api/v1/events",
                    peer_token,
                    CpuMeter({"node": peer.pid, "redis": redis_proc.pid}, PEER_DATABASE_URL),
                    PEER_DATABASE_URL,
                    redis_url,
                    PEER_QUEUE_KEY,
                ),
            ]
            print(
                f"eventflow: gunicorn -c gunicorn.conf.py wsgi:app (pid {gunicorn.pid}) on {base}"
            )
            print(f"peer: {args.peer_dir / 'start.sh'} server (pid {peer.pid}) on {peer_base}")
            print(f"both: {wrk_command(args)} URL, after a {args.warmup:g} s warm-up of each")
            for side in sides:
                side.measure(wrk, args.warmup, args, "warm-up")
            for n in range(1, args.rounds + 1):
                for side in sides:
                    side.measure(wrk, args.duration, args, str(n))
            time.sleep(1)  # let the requests wrk stopped waiting for finish
            stop_peer(peer)
            stop(gunicorn)
            summarize(sides, args)
            ok = True
            for side in sides:
                print(f"\n{side.name}:", end="")
                ok &= check_nothing_lost(
                    side.database_url, side.redis_url, side.runs, side.queue_key
                )
        finally:
            if peer is not None:
                stop_peer(peer)
            if gunicorn is not None:
                stop(gunicorn)
            if redis_proc is not None:
                stop(redis_proc)
            drop_database(args.database_url)
            drop_database(PEER_DATABASE_URL)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was stopped by main's finally
        sys.exit("bench/compare_peer.py: interrupted")
