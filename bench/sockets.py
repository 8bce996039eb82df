"""Socket flood benchmark: the API while 1,000 idle WebSockets and 200 live dashboards are open.

    .venv/bin/python bench/sockets.py [--runs 5] [--idle 1000] [--live 200] [--requests 2000]

CONTRACT section 9, "Live connections never starve the API". PostgreSQL and Redis must be
running; wrk is needed for the ingest part (`--wrk-duration 0` leaves it out).

What it does: recreates its own database (`eventflow_bench_sockets`) and empties Redis database
11, runs `flask db upgrade`, creates an admin and a user, and starts
`gunicorn -c gunicorn.conf.py wsgi:app` on a free port with EVENTFLOW_ENV=production and a
deadline for unauthenticated sockets (EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS) longer than the
bench, so the idle sockets stay for the measurement. Each run then:

1. measures the quiet server: `--requests` sequential GET /api/v1/health, each on a new
   connection (so both workers answer), then a wrk ingest run (bench/ingest.lua);
2. opens the sockets from a separate client process (asyncio, a minimal WebSocket client, so
   that client does not share the measuring process's interpreter): first `--live` admin
   dashboards (Engine.IO v4 + Socket.IO v5, `auth: {token}`, answering pings and counting
   `stats`), then `--idle` raw upgrades that never join a namespace (they only answer
   Engine.IO pings, as any client keeping a socket would);
3. holds them for `--hold` seconds and reads every process's CPU meanwhile;
4. measures health and ingest again with them open, counts which sockets are still open and
   which dashboards kept receiving `stats`; then closes them all.

A request that gets no answer within `--timeout` seconds counts as unanswered; after three in a
row the run reports the API as not answering and moves on instead of hanging (what
GUNICORN_WORKER_CLASS=gthread does: each WebSocket holds one of its request threads). Prints the
figures per run and the median of the runs, then what fell short (a socket not opened or closed
early, a dashboard without `stats`, an unanswered request), and exits 1 if anything did.
Everything it started is stopped, and its database and Redis database are dropped/emptied at
the end. Run by hand only, never in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
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
    start_gunicorn,
    stop,
)
from ingest import CpuMeter, Run, require_wrk, run_wrk

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_bench_sockets"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
ADMIN_EMAIL = "bench-admin@example.com"
USER_EMAIL = "bench-user@example.com"
PASSWORD = "bench-password-123"
SOCKET_PATH = "/socket.io/?EIO=4&transport=websocket"
NAMESPACE = "/dashboard"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed suffix for the accept key
HANDSHAKES_AT_ONCE = 64  # more would only queue in the listen backlog
UNANSWERED_IN_A_ROW = 3  # then the API is not answering: stop this measurement


# ---------------------------------------------------------------- the client process (asyncio)


class WebSocket:
    """The client side of RFC 6455 over asyncio streams: text frames, pings, end of stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> tuple[WebSocket | None, str]:
        """Upgrade a new connection; (socket, "101"), or (None, the status it got instead)."""
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            f"GET {SOCKET_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
        status = head.split(None, 2)[1].decode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if status != "101" or accept not in head:
            writer.close()
            return None, status
        return cls(reader, writer), status

    async def receive(self) -> str | None:
        """The next text message; None once the server has closed the connection."""
        message = b""
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)  # a server never masks
            opcode = first & 0x0F
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode in (0x0, 0x1):
                message += payload
                if first & 0x80:
                    return message.decode()

    def send(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _send(self, opcode: int, data: bytes) -> None:
        mask = os.urandom(4)  # RFC 6455: every client frame is masked
        size = len(data)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        else:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def close(self) -> None:
        self.writer.close()


@dataclass
class Idle:
    """One idle socket: upgraded, never joins a namespace."""

    socket: WebSocket
    open: bool = True


@dataclass
class Dashboard:
    """One live admin client on /dashboard and the `stats` it got."""

    socket: WebSocket
    stats: int = 0
    largest_later: int = 0  # bytes of the largest `stats` after the first (CONTRACT: 2 KB)
    open: bool = True


@dataclass
class Swarm:
    """The sockets of the flood, held by one asyncio loop in the client process."""

    host: str
    port: int
    idle: list[Idle] = field(default_factory=list)
    live: list[Dashboard] = field(default_factory=list)
    tasks: set[asyncio.Task] = field(default_factory=set)

    async def serve(self, conn) -> None:
        """Run the parent's commands (open, tally, close) until it says stop."""
        loop = asyncio.get_running_loop()
        while (request := await loop.run_in_executor(None, conn.recv))[0] != "stop":
            command, kwargs = request
            conn.send(await getattr(self, command)(**kwargs))
        await self.close()

    async def open(self, token: str, idle: int, live: int, timeout: float) -> dict:
        """Connect the dashboards, then the idle sockets; say what each kind got."""
        started = time.monotonic()
        gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        deadline = time.monotonic() + timeout
        joins = await asyncio.gather(*(self._join(token, gate, deadline) for _ in range(live)))
        deadline = time.monotonic() + timeout
        upgrades = await asyncio.gather(*(self._upgrade(gate, deadline) for _ in range(idle)))
        # The first `stats` (with the chart history) comes at the broadcaster's next tick.
        deadline = time.monotonic() + min(timeout, 10)
        while time.monotonic() < deadline and any(not d.stats for d in self.live):
            await asyncio.sleep(0.1)
        return {
            "seconds": time.monotonic() - started,
            "live": dict(Counter(joins)),
            "idle": dict(Counter(upgrades)),
            "live_with_stats": sum(1 for d in self.live if d.stats),
        }

    async def _upgrade(self, gate: asyncio.Semaphore, deadline: float) -> str:
        """One raw upgrade, held open; "101", the status it got instead, or what went wrong."""
        try:
            async with asyncio.timeout(left(deadline)), gate:
                ws, status = await WebSocket.connect(self.host, self.port)
        except TimeoutError:  # before OSError: it is one
            return "no answer"
        except OSError as exc:
            return type(exc).__name__
        if ws is not None:
            self.idle.append(Idle(ws))
            self._keep(self.idle[-1], lambda message: None)
        return status

    async def _join(self, token: str, gate: asyncio.Semaphore, deadline: float) -> str:
        """One admin dashboard: upgrade, then join /dashboard with the token."""
        ws = None
        try:
            async with asyncio.timeout(left(deadline)), gate:
                ws, status = await WebSocket.connect(self.host, self.port)
                if ws is None:
                    return status
                await ws.receive()  # Engine.IO's open packet
                ws.send(f"40{NAMESPACE},{json.dumps({'token': token})}")
                answer = await ws.receive() or "closed"
        except (OSError, asyncio.IncompleteReadError) as exc:
            if ws is not None:
                ws.close()
            return "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        if not answer.startswith(f"40{NAMESPACE},"):
            ws.close()
            return f"refused: {answer[:80]}"
        dashboard = Dashboard(ws)
        self.live.append(dashboard)
        self._keep(dashboard, lambda message: count_stats(dashboard, message))
        return "joined"

    def _keep(self, holder: Idle | Dashboard, on_message) -> None:
        """Read the socket until it closes, answering Engine.IO pings as any client must."""

        async def read() -> None:
            try:
                while (message := await holder.socket.receive()) is not None:
                    if message == "2":
                        holder.socket.send("3")
                    else:
                        on_message(message)
            except (OSError, asyncio.IncompleteReadError):
                pass
            holder.open = False

        task = asyncio.create_task(read())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def tally(self) -> dict:
        return {
            "idle_open": sum(1 for idle in self.idle if idle.open),
            "live_open": sum(1 for d in self.live if d.open),
            "stats": [d.stats for d in self.live],
            "largest_later": max((d.largest_later for d in self.live), default=0),
        }

    async def close(self) -> dict:
        for task in list(self.tasks):
            task.cancel()
        writers = [held.socket.writer for held in [*self.idle, *self.live]]
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        self.idle.clear()
        self.live.clear()
        return {"closed": len(writers)}


def left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def count_stats(dashboard: Dashboard, message: str) -> None:
    if message.startswith(f'42{NAMESPACE},["stats"'):
        if dashboard.stats:
            dashboard.largest_later = max(dashboard.largest_later, len(message.encode()))
        dashboard.stats += 1


def run_swarm(conn, host: str, port: int) -> None:
    """The client process: hold the sockets, answer the parent's commands."""
    asyncio.run(Swarm(host, port).serve(conn))


class SwarmProcess:
    """The parent's handle on the client process."""

    def __init__(self, host: str, port: int):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=run_swarm, args=(child, host, port), daemon=True)
        self.process.start()

    def call(self, command: str, **kwargs) -> dict:
        self.conn.send((command, kwargs))
        return self.conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop", {}))
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# --------------------------------------------------------- the measuring process (this one)


@dataclass
class Latency:
    answered: list[float]  # ms, of the requests answered 200
    unanswered: int  # no answer within the timeout, or the connection failed
    other: int  # answered, but not 200
    stopped: bool  # gave up: UNANSWERED_IN_A_ROW in a row

    def percentile(self, p: int) -> float:
        if len(self.answered) < 2:
            return float("nan")
        return statistics.quantiles(self.answered, n=100, method="inclusive")[p - 1]

    def figures(self) -> str:
        return "  ".join(f"p{p} {self.percentile(p):6.1f} ms" for p in (50, 95, 99))

    def line(self) -> str:
        total = len(self.answered) + self.unanswered + self.other
        text = f"{len(self.answered)} of {total} answered 200"
        if self.stopped:
            return f"health NOT ANSWERING ({text}; {UNANSWERED_IN_A_ROW} in a row got no answer)"
        return f"health {self.figures()}  max {max(self.answered):6.1f} ms  ({text})"


def measure_health(port: int, requests: int, timeout: float) -> Latency:
    """`requests` sequential GET /api/v1/health, each on a new connection."""
    result = Latency([], 0, 0, False)
    in_a_row = 0
    for _ in range(requests):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/api/v1/health")
            response = conn.getresponse()
            response.read()
        except OSError:
            result.unanswered += 1
            in_a_row += 1
            if in_a_row == UNANSWERED_IN_A_ROW:
                result.stopped = True
                break
            continue
        finally:
            conn.close()
        in_a_row = 0
        if response.status == 200:
            result.answered.append(1000 * (time.perf_counter() - started))
        else:
            result.other += 1
    return result


class ProcessCpu:
    """CPU seconds of each process that matters here (Linux /proc; nothing elsewhere)."""

    def __init__(self, gunicorn_pid: int, swarm_pid: int, database_url: str):
        self.named = {"master": gunicorn_pid, "clients": swarm_pid, "bench": os.getpid()}
        self.gunicorn_pid = gunicorn_pid
        self.admin_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
        self.database = urlsplit(database_url).path.lstrip("/")
        self.tick = os.sysconf("SC_CLK_TCK")
        self.enabled = Path("/proc/stat").exists()

    @staticmethod
    def _stat(pid: int) -> list[str]:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return []

    def _seconds(self, pid: int) -> float:
        fields = self._stat(pid)
        return (int(fields[11]) + int(fields[12])) / self.tick if fields else 0.0

    def workers(self) -> list[int]:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        return sorted(p for p in pids if (self._stat(p) or [0, 0])[1] == str(self.gunicorn_pid))

    def _backends(self) -> list[int]:
        conn = psycopg2.connect(self.admin_url)
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))
            pids = [row[0] for row in cur.fetchall()]
        conn.close()
        return pids

    def sample(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        seconds = {name: self._seconds(pid) for name, pid in self.named.items()}
        for n, pid in enumerate(self.workers(), 1):
            seconds[f"worker {n}"] = self._seconds(pid)
        seconds["postgres"] = sum(self._seconds(pid) for pid in self._backends())
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        seconds["machine"] = (sum(fields) - fields[3] - fields[4]) / self.tick  # not idle/iowait
        return {**seconds, "at": time.monotonic()}

    @staticmethod
    def percent(before: dict, after: dict) -> dict[str, float]:
        """% of one core per process between two samples ("machine" is all cores together)."""
        if not before:
            return {}
        wall = after["at"] - before["at"]
        return {k: 100 * (after[k] - before[k]) / wall for k in after if k in before and k != "at"}


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass
class Result:
    quiet: Latency
    flood: Latency
    quiet_ingest: Run | None
    flood_ingest: Run | None
    cpu: dict[str, float]  # % of a core per process while the sockets were held
    problems: list[str]  # what fell short of CONTRACT section 9 in this run


def cpu_line(cpu: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.1f}" for name, value in cpu.items())


class TickCounter:
    """`stats` received by each dashboard of the swarm since the last look."""

    MIN_SECONDS = 3.0  # a tick a second: a shorter look could fall between two

    def __init__(self, swarm: SwarmProcess | None):
        self.swarm = swarm
        self.seen = swarm.call("tally")["stats"] if swarm else []
        self.since = time.monotonic()
        self.receiving = len(self.seen)  # dashboards that got stats in every look so far

    def look(self) -> str:
        if self.swarm is None:
            return ""
        time.sleep(max(0.0, self.MIN_SECONDS - (time.monotonic() - self.since)))
        now, seconds = self.swarm.call("tally")["stats"], time.monotonic() - self.since
        gained = [after - before for before, after in zip(self.seen, now, strict=True)]
        self.seen, self.since = now, time.monotonic()
        self.receiving = min(self.receiving, sum(1 for g in gained if g))
        return (
            f"\n{'':16}meanwhile {sum(1 for g in gained if g)} of {len(gained)} dashboards "
            f"received stats: min {min(gained, default=0)}, "
            f"median {statistics.median(gained) if gained else 0:g} in {seconds:.1f} s"
        )


def measure(
    bench: dict, args: argparse.Namespace, label: str, ticks: TickCounter
) -> tuple[Latency, Run | None]:
    """Health latency, then (unless health stopped answering) a wrk ingest run."""
    health = measure_health(bench["port"], args.requests, args.timeout)
    print(f"  {label}  {health.line()}{ticks.look()}")
    if not args.wrk_duration or health.stopped:
        return health, None
    url = f"http://127.0.0.1:{bench['port']}/api/v1/events"
    run = run_wrk(bench["wrk"], url, bench["user_token"], args.wrk_duration, args, bench["meter"])
    print(f"  {label}  ingest {run.line('').strip()}{ticks.look()}")
    return health, run


def one_run(n: int, bench: dict, args: argparse.Namespace) -> Result:
    swarm, cpu = bench["swarm"], bench["cpu"]
    print(f"run {n}")
    quiet, quiet_ingest = measure(bench, args, "no sockets  ", TickCounter(None))

    opened = swarm.call(
        "open", token=bench["admin_token"], idle=args.idle, live=args.live, timeout=args.timeout * 4
    )
    print(
        f"  opened in {opened['seconds']:.1f} s: idle {opened['idle']} of {args.idle}; "
        f"live {opened['live']} of {args.live}, {opened['live_with_stats']} got their first stats"
    )
    before = cpu.sample()
    time.sleep(args.hold)
    held = ProcessCpu.percent(before, cpu.sample())
    files = ", ".join(str(open_files(pid)) for pid in cpu.workers())
    print(
        f"  holding {args.hold:g} s, % of a core (machine: everyone's, all cores): {cpu_line(held)}"
    )
    print(f"  open files per gunicorn worker: {files}")

    ticks = TickCounter(swarm)
    flood, flood_ingest = measure(bench, args, "with sockets", ticks)
    tally = swarm.call("tally")
    print(
        f"  still open: idle {tally['idle_open']}, live {tally['live_open']}; "
        f"largest stats after the first: {tally['largest_later']} bytes"
    )
    swarm.call("close")
    problems = [
        f"{what}: {got} of {wanted}"
        for what, got, wanted in (
            ("idle sockets upgraded (101)", opened["idle"].get("101", 0), args.idle),
            ("dashboards joined", opened["live"].get("joined", 0), args.live),
            ("idle sockets open to the end", tally["idle_open"], args.idle),
            ("dashboards receiving stats throughout", ticks.receiving, args.live),
            ("health requests answered 200", len(flood.answered), args.requests),
        )
        if got < wanted
    ]
    if flood_ingest and (flood_ingest.non_2xx or flood_ingest.socket_errors):
        problems.append(
            f"ingest with sockets: {flood_ingest.non_2xx} non-2xx, "
            f"{flood_ingest.socket_errors} socket errors"
        )
    return Result(quiet, flood, quiet_ingest, flood_ingest, held, problems)


def summarize(results: list[Result], args: argparse.Namespace) -> None:
    shape = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GUNICORN"))
    print(
        f"\nmedian of {len(results)} runs (gunicorn.conf.py{' with ' + shape if shape else ''}; "
        f"{args.idle} idle + {args.live} live sockets, {args.requests} health requests):"
    )
    for label, pick in (("no sockets  ", lambda r: r.quiet), ("with sockets", lambda r: r.flood)):
        answering = [pick(r) for r in results if not pick(r).stopped]
        figures = "NOT ANSWERING"
        if answering:
            figures = "  ".join(
                f"p{p} {statistics.median(x.percentile(p) for x in answering):.1f} ms"
                for p in (50, 95, 99)
            )
        unanswered = sum(pick(r).unanswered for r in results)
        print(
            f"  {label}  health {figures}  (answering in "
            f"{len(answering)} of {len(results)} runs; requests unanswered: {unanswered})"
        )
    for label, pick in (("no sockets  ", "quiet_ingest"), ("with sockets", "flood_ingest")):
        runs = [getattr(r, pick) for r in results if getattr(r, pick)]
        if runs:
            rate = statistics.median(run.per_second for run in runs)
            p99 = statistics.median(run.p99_ms for run in runs)
            print(f"  {label}  ingest {rate:.0f} events/s, p99 {p99:.0f} ms ({len(runs)} runs)")
    if all(r.cpu for r in results):
        cpu = {k: statistics.median(r.cpu.get(k, 0) for r in results) for k in results[0].cpu}
        print(f"  holding the sockets, % of a core: {cpu_line(cpu)}")
    for n, result in enumerate(results, 1):
        for problem in result.problems:
            print(f"  FAILED in run {n}: {problem}")


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to `needed`; gunicorn and the client process inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        fail(f"{needed} open files are needed but the hard limit is {hard} (see `ulimit -Hn`)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def login(base_url: str, email: str) -> str:
    conn = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=10)
    body = json.dumps({"email": email, "password": PASSWORD})
    conn.request("POST", "/api/v1/auth/login", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        fail(f"login as {email}: {response.status} {response.read()!r}")
    token = json.load(response)["access_token"]
    conn.close()
    return token


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--idle", type=int, default=1000, help="idle unauthenticated sockets")
    parser.add_argument("--live", type=int, default=200, help="live admin dashboards")
    parser.add_argument("--requests", type=int, default=2000, help="health requests per phase")
    parser.add_argument("--hold", type=float, default=5, help="seconds of CPU reading")
    parser.add_argument("--timeout", type=float, default=5, help="seconds before unanswered")
    parser.add_argument("--wrk-duration", type=float, default=5, help="0: no ingest run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or args.requests < 2:
        parser.error("--runs must be 1-20 and --requests at least 2")
    return args


def main() -> int:
    args = parse_args()
    # This process's sockets, then gunicorn's (it inherits the limit), plus wrk and pools.
    raise_open_file_limit(args.idle + args.live + args.connections + 1024)
    wrk = require_wrk() if args.wrk_duration else None
    recreate_database(args.database_url)
    queue = redis.Redis.from_url(args.redis_url)
    queue.flushdb()  # our own database number, never FLUSHALL
    gunicorn = swarm = None
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-") as tmp:
        env = app_env(
            args.database_url,
            args.redis_url,
            tmp,
            JWT_ACCESS_TOKEN_EXPIRES_SECONDS="3600",
            # The idle sockets are the point: they must outlive the bench, not 10 s.
            EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS="3600",
        )
        try:
            flask(env, "db", "upgrade")
            flask(env, "users", "create", ADMIN_EMAIL, "--admin", "--password", PASSWORD)
            flask(env, "users", "create", USER_EMAIL, "--password", PASSWORD)
            port = free_port()
            gunicorn = start_gunicorn(env, port, Path(tmp) / "gunicorn.log")
            base_url = f"http://127.0.0.1:{port}"
            swarm = SwarmProcess("127.0.0.1", port)
            bench = {
                "port": port,
                "swarm": swarm,
                "wrk": wrk,
                "admin_token": login(base_url, ADMIN_EMAIL),
                "user_token": login(base_url, USER_EMAIL),
                "cpu": ProcessCpu(gunicorn.pid, swarm.process.pid, args.database_url),
                "meter": CpuMeter(gunicorn.pid, args.database_url),
            }
            print(
                f"gunicorn (pid {gunicorn.pid}) on {base_url}; clients in pid {swarm.process.pid}"
            )
            measure_health(port, 200, args.timeout)  # warm-up: pools, caches
            results = [one_run(n, bench, args) for n in range(1, args.runs + 1)]
            summarize(results, args)
            ok = not any(result.problems for result in results)
        finally:
            if swarm is not None:
                swarm.stop()
            if gunicorn is not None:
                stop(gunicorn)
            queue.flushdb()
            drop_database(args.database_url)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
