"""Ingest through nginx: two EventFlow instances behind the deployed nginx config, against one.

    .venv/bin/python bench/scale_out.py [--runs 5] [--duration 10] [--connections 32]

Run by hand, never in CI. Needs wrk, redis-server and nginx (Debian/Ubuntu: `apt-get install -y
wrk redis-server nginx`) and a running PostgreSQL.

What it does: recreates its own database (`eventflow_scalebench`), starts a private redis-server
(no persistence; `--redis-url` uses another, which is emptied), runs `flask db upgrade`, creates
a user and starts two gunicorn instances (`gunicorn -c gunicorn.conf.py wsgi:app`, each at its
default shape, EVENTFLOW_ENV=production, EVENTFLOW_PROXY_HOPS=1 as in compose) on one database
and one Redis. deploy/nginx.conf and the files it includes are laid out unchanged in a temporary
prefix, as tests/test_nginx.py does, but for the addresses: the upstream's `server web:5000;`
becomes both instances (one nginx) or the first one alone (a second nginx), and the server
listens on a free local port. The main file is the nginx image's, reduced (worker_processes
auto, an access log, keep-alive 65 s), with every path under the prefix. Three shapes, each
driven by the same wrk command as bench/ingest.py (bench/ingest.lua):

    2 via nginx   nginx -> both instances
    1 via nginx   nginx -> instance 1
    1 direct      wrk -> instance 1

After a warm-up of each, the runs alternate between the shapes; it prints every run, then per
shape the median events/s, p50/p99 and CPU: ms per event and cores used, for nginx, each
gunicorn (with its workers), this database's PostgreSQL backends, Redis, wrk and the rest of the
machine. It checks that nothing was lost (every 202 is a row and a queue message); everything
it started is stopped and its database dropped, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import getpass
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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
    start_redis,
    stop,
)
from ingest import (
    USER_EMAIL,
    USER_PASSWORD,
    CpuMeter,
    Run,
    check_nothing_lost,
    login,
    require_wrk,
    run_wrk,
)

NGINX = "/usr/sbin/nginx"
DEPLOY = ROOT / "deploy"
INCLUDE = re.compile(r"^\s*include\s+(\S+);", re.M)
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_scalebench"
# The nginx image's main file, reduced to what a server needs; every path nginx writes lives
# under the prefix, so it runs side by side with other instances, root or not.
MAIN_CONF = """\
user {user};
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
daemon off;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" "$http_x_forwarded_for"';
    access_log {prefix}/access.log main;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include conf.d/*.conf;
}}
"""


def rewrite(text: str, old: str, new: str) -> str:
    """Replace `old`, failing loudly if the deployed file no longer contains it."""
    if old not in text:
        fail(f"{old!r} is no longer in the deployed nginx configuration")
    return text.replace(old, new)


def install_nginx(prefix: Path, upstreams: list[str], port: int) -> Path:
    """Lay out deploy/nginx.conf and the files it includes under prefix; return the main file."""
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "temp").mkdir()
    site = rewrite((DEPLOY / "nginx.conf").read_text(), "listen 80 ", f"listen 127.0.0.1:{port} ")
    (prefix / "conf.d" / "default.conf").write_text(site)
    # Relative includes resolve against the main file's directory, as in the image.
    servers = "\n    ".join(f"server {upstream};" for upstream in upstreams)
    for name in INCLUDE.findall(site):
        text = (DEPLOY / name).read_text()
        if "server web:5000;" in text:
            text = rewrite(text, "server web:5000;", servers)
        (prefix / name).write_text(text)
    main = prefix / "nginx.conf"
    main.write_text(MAIN_CONF.format(user=getpass.getuser(), prefix=prefix))
    return main


def start_nginx(prefix: Path, upstreams: list[str]) -> tuple[subprocess.Popen, str]:
    """nginx with deploy/nginx.conf in front of upstreams: (process, base URL) once it proxies."""
    port = free_port()
    main = install_nginx(prefix, upstreams, port)
    log_path = prefix / "output.log"
    proc = subprocess.Popen(
        [NGINX, "-p", f"{prefix}/", "-c", str(main), "-e", str(prefix / "error.log")],
        stdout=open(log_path, "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                    if response.status == 200:
                        return proc, base
            except OSError:
                time.sleep(0.1)
    except BaseException:  # Ctrl-C or SIGTERM meanwhile: the caller has no handle to stop it
        stop(proc)
        raise
    stop(proc)
    logs = [p.read_text(errors="replace") for p in (log_path, prefix / "error.log") if p.exists()]
    fail("nginx did not proxy /health:\n" + "\n".join(logs))


def summarize(shapes: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"\nmedian of {args.runs} runs per shape ({args.duration:g} s each, "
        f"wrk -t{args.wrk_threads} -c{args.connections}):"
    )
    for shape, runs in shapes.items():
        print(
            f"  {shape:<11}  {statistics.median(r.per_second for r in runs):6.0f} events/s  "
            f"p50 {statistics.median(r.p50_ms for r in runs):6.1f} ms  "
            f"p99 {statistics.median(r.p99_ms for r in runs):6.1f} ms"
        )
        if all(r.cpu for r in runs):
            names = runs[0].cpu
            ms = {name: statistics.median(r.cpu[name] for r in runs) for name in names}
            cores = {
                name: statistics.median(r.cpu[name] * r.per_second / 1000 for r in runs)
                for name in names
            }
            print(f"{'':15}CPU ms/event: {Run.cpu_line_of(ms)}")
            print(
                f"{'':15}cores used:   {Run.cpu_line_of(cores)}  (all: {sum(cores.values()):.2f})"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per shape (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per shape")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--redis-url", help="use this Redis database (it is emptied!) instead of a private one"
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120:
        parser.error("--runs must be 1-20 and --duration 1-120 seconds")
    if not Path(NGINX).exists():
        parser.error(f"{NGINX} is missing: `apt-get install -y nginx`")
    return args


def main() -> int:
    args = parse_args()
    wrk = require_wrk()
    # A plain `kill` must still stop everything and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/scale_out.py: terminated"))
    redis_proc = None
    servers: list[subprocess.Popen] = []  # gunicorns and nginxes, stopped in reverse order
    ok = False
    with tempfile.TemporaryDirectory(prefix="eventflow-scalebench-") as tmp:
        try:
            recreate_database(args.database_url)
            if args.redis_url:
                redis_url = args.redis_url
                redis.Redis.from_url(redis_url).flushdb()  # its own database, never FLUSHALL
            else:
                redis_proc, redis_url = start_redis(Path(tmp) / "redis.log")
            # The token must outlive the longest bench; both instances share the secrets.
            env = app_env(
                args.database_url,
                redis_url,
                tmp,
                JWT_ACCESS_TOKEN_EXPIRES_SECONDS="7200",
                EVENTFLOW_PROXY_HOPS="1",
            )
            flask(env, "db", "upgrade")
            flask(env, "users", "create", USER_EMAIL, "--password", USER_PASSWORD)
            instances, gunicorns = [], {}
            for n in (1, 2):
                port = free_port()
                servers.append(start_gunicorn(env, port, Path(tmp) / f"gunicorn-{n}.log"))
                instances.append(f"127.0.0.1:{port}")
                gunicorns[f"gunicorn {n}"] = servers[-1].pid
            nginx_2, via_2 = start_nginx(Path(tmp) / "nginx-2", instances)
            servers.append(nginx_2)
            nginx_1, via_1 = start_nginx(Path(tmp) / "nginx-1", instances[:1])
            servers.append(nginx_1)
            token = login(f"http://{instances[0]}")
            redis_pid = {"redis": redis_proc.pid} if redis_proc else {}
            shapes = {  # name -> (URL, processes to measure)
                "2 via nginx": (via_2, {"nginx": nginx_2.pid, **gunicorns, **redis_pid}),
                "1 via nginx": (via_1, {"nginx": nginx_1.pid, **gunicorns, **redis_pid}),
                "1 direct": (f"http://{instances[0]}", {**gunicorns, **redis_pid}),
            }
            print(f"gunicorn -c gunicorn.conf.py wsgi:app on {' and '.join(instances)}")
            print(f"deploy/nginx.conf: {via_2} -> both, {via_1} -> the first")
            print(
                f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s "
                "-s bench/ingest.lua <URL>/api/v1/events"
            )
            meters = {
                shape: CpuMeter(measured, args.database_url)
                for shape, (_, measured) in shapes.items()
            }
            runs: dict[str, list[Run]] = {shape: [] for shape in shapes}
            every: list[Run] = []
            for n in range(args.runs + 1):  # the first round is the warm-up
                for shape, (base, _) in shapes.items():
                    seconds = args.warmup if n == 0 else args.duration
                    url = f"{base}/api/v1/events"
                    every.append(run_wrk(wrk, url, token, seconds, args, meters[shape]))
                    print(every[-1].line(f"{shape} {'warm-up' if n == 0 else n}"))
                    if n:
                        runs[shape].append(every[-1])
            for proc in reversed(servers):  # nginx, then gunicorn, finish what they hold
                stop(proc)
            summarize(runs, args)
            ok = check_nothing_lost(args.database_url, redis_url, every)
        finally:
            for proc in reversed(servers):
                stop(proc)
            if redis_proc is not None:
                stop(redis_proc)
            elif args.redis_url:
                redis.Redis.from_url(args.redis_url).flushdb()
            drop_database(args.database_url)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was stopped by main's finally
        sys.exit("bench/scale_out.py: interrupted")
