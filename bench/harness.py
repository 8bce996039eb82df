"""Helpers shared by the benchmarks: their database, the app's environment, its processes.

Starting gunicorn, workers, flask commands and Redis is tests/processes.py's, which the tests
use too; this adds what a benchmark needs around it (a database of its own, production
settings) and turns a failure into one line naming the script.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2.extensions import connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.processes import (  # noqa: E402  (needs the repository on sys.path)
    BIN,
    ROOT,
    Process,
    ProcessError,
    app_environment,
    flask_cli,
    free_port,
    launch_gunicorn,
    wait_until_serving,
)
from tests.processes import start_redis as start_redis_process  # noqa: E402
from tests.processes import start_worker as start_worker_process  # noqa: E402

__all__ = ["BIN", "ROOT", "Process", "free_port"]


def fail(message: str) -> NoReturn:
    """Exit with `message`, prefixed by the running script's name (e.g. bench/ingest.py)."""
    sys.exit(f"bench/{Path(sys.argv[0]).name}: {message}")


def admin_connection(url: str) -> tuple[connection, str]:
    """An autocommit connection to the `postgres` database of url's server, and url's database."""
    parts = urlsplit(url)
    conn = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    conn.autocommit = True
    return conn, parts.path.lstrip("/")


def recreate_database(url: str) -> None:
    """Drop url's database (even if in use) and create it again, empty."""
    conn, name = admin_connection(url)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def drop_database(url: str) -> None:
    """Drop url's database, even if in use."""
    conn, name = admin_connection(url)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def app_env(database_url: str, redis_url: str, instance: str, **extra: str) -> dict[str, str]:
    """This environment without EVENTFLOW_*, set up for the app in production, plus `extra`."""
    return app_environment(
        database_url,
        redis_url,
        instance,
        "production",
        SECRET_KEY=secrets.token_hex(32),
        JWT_SECRET_KEY=secrets.token_hex(32),
        **extra,
    )


def flask(env: dict[str, str], *args: str) -> None:
    """Run `flask --app wsgi *args` in the repository; fail with its output if it fails."""
    result = flask_cli(env, *args, timeout=None)
    if result.returncode != 0:
        fail(f"`flask {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def stop(proc: Process | subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM and wait; SIGKILL the process group if it will not go."""
    if isinstance(proc, Process):
        proc.stop(timeout)
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_gunicorn(env: dict[str, str], port: int, log_path: Path) -> Process:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on the port, once it answers /health with 200."""
    proc, url = launch_gunicorn(env, log_path, port=port)
    try:
        wait_until_serving(proc, url, statuses=(200,), timeout=30)
    except ProcessError as exc:
        stop(proc)
        fail(str(exc))
    except BaseException:  # Ctrl-C or SIGTERM meanwhile: the caller has no handle to stop it
        stop(proc)
        raise
    return proc


def start_worker(env: dict[str, str], workers: int, log_path: Path) -> Process:
    """`flask --app wsgi worker --workers N --processes`."""
    return start_worker_process(env, log_path, "--workers", str(workers), "--processes")


def start_redis(log_path: Path) -> tuple[Process, str]:
    """A private redis-server (no persistence) on a free port: (process, URL)."""
    try:
        return start_redis_process(log_path)
    except ProcessError as exc:
        fail(str(exc))
