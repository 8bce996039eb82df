"""Helpers shared by the benchmarks: their database, the app's environment, subprocesses."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2.extensions import connection

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def fail(message: str) -> NoReturn:
    """Exit with `message`, prefixed by the running script's name (e.g. bench/ingest.py)."""
    sys.exit(f"bench/{Path(sys.argv[0]).name}: {message}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFLOW_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        EVENTFLOW_ENV="production",
        SECRET_KEY=secrets.token_hex(32),
        JWT_SECRET_KEY=secrets.token_hex(32),
        EVENTFLOW_INSTANCE_PATH=instance,
        **extra,
    )
    return env


def flask(env: dict[str, str], *args: str) -> None:
    """Run `flask --app wsgi *args` in the repository; fail with its output if it fails."""
    result = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"`flask {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM and wait; SIGKILL the process group if it will not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
