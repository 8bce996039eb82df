"""Fixtures: a migrated PostgreSQL database, Redis, the app, clients, users, workers, servers.

Tests use DATABASE_URL / REDIS_URL when set; otherwise a local `eventflow_test` database and
Redis database 15. A missing service fails the run: nothing is skipped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import redis as redis_lib
import requests
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
TABLES = "event_attempts, events, revoked_tokens, users, workers, stat_buckets"
# Fast pipeline settings so retry and recovery tests finish in seconds.
FAST_PIPELINE = {
    "EVENTFLOW_RETRY_BASE_SECONDS": "0.05",
    "EVENTFLOW_RETRY_MAX_SECONDS": "0.2",
    "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS": "3",
    "EVENTFLOW_RECOVERY_INTERVAL_SECONDS": "0.5",
    "EVENTFLOW_HANDLERS": "tests.handlers",
}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = ""):
    """Poll until predicate() is truthy; return its value or fail with `message`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flask_cli(env: dict[str, str], *args: str, check: bool = False):
    """Run `flask --app wsgi ARGS` as a real command; return the finished process (text output)."""
    done = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = psycopg2.connect(admin_url.replace("postgresql+psycopg2", "postgresql"))
    except psycopg2.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable at {admin_url}: {exc}", returncode=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    _ensure_database(url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    try:
        redis_lib.Redis.from_url(url).ping()
    except redis_lib.RedisError as exc:
        pytest.exit(f"Redis is not reachable at {url}: {exc}", returncode=3)
    return url


@pytest.fixture(scope="session")
def base_env(database_url, redis_url, tmp_path_factory) -> dict[str, str]:
    """Environment for the app and for worker/gunicorn subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFLOW_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        EVENTFLOW_ENV="test",
        EVENTFLOW_INSTANCE_PATH=str(tmp_path_factory.mktemp("instance")),
        PYTHONPATH=str(ROOT),
        **FAST_PIPELINE,
    )
    return env


@pytest.fixture(scope="session")
def migrated(database_url, base_env):
    """Drop everything, then build the schema with the real migrations (flask db upgrade)."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.close()
    flask_cli(base_env, "db", "upgrade", check=True)
    return True


@pytest.fixture
def app(migrated, base_env):
    from eventflow import create_app

    app = create_app({**base_env, "TESTING": True})
    with app.app_context():
        from eventflow.extensions import db

        db.session.execute(text(f"TRUNCATE {TABLES} CASCADE"))
        db.session.commit()
        db.session.remove()
    redis_lib.Redis.from_url(base_env["REDIS_URL"]).flushdb()
    yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """Factory: make_user(email=None, password=..., admin=False) -> (id, email, role)."""
    from eventflow import users

    def make(email: str | None = None, password: str = "correct-horse", admin: bool = False):
        with app.app_context():
            user = users.create_user(
                email or f"user-{uuid.uuid4().hex[:8]}@example.com", password, admin=admin
            )
            return SimpleNamespace(id=user.id, email=user.email, role=user.role)

    return make


def bearer(client, email: str, password: str = "correct-horse") -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


@pytest.fixture
def auth(client, make_user):
    """Bearer header of a fresh ordinary user."""
    return bearer(client, make_user().email)


@pytest.fixture
def admin_auth(client, make_user):
    """Bearer header of a fresh admin."""
    return bearer(client, make_user(admin=True).email)


class Process:
    """A subprocess of ours (worker, gunicorn) with its output kept in a file for failures."""

    def __init__(self, args, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait; SIGKILL the whole group if it will not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the process and everything it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def start_worker(base_env, tmp_path):
    """Factory: start_worker(*args, **env) -> Process running `flask --app wsgi worker`."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> Process:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = Process(
            [str(BIN / "flask"), "--app", "wsgi", "worker", *args], {**base_env, **env}, log
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def worker(app, start_worker):
    """A running worker with two threads (the default pipeline settings of the tests)."""
    return start_worker("--workers", "2")


def launch_gunicorn(
    env: dict[str, str], log_path: Path, *args: str, port: int | None = None
) -> tuple[Process, str]:
    """Start `gunicorn -c gunicorn.conf.py wsgi:app` on a free port; (process, base URL)."""
    port = port or free_port()
    proc = Process(
        [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            *args,
            "wsgi:app",
        ],
        env,
        log_path,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_until_serving(proc: Process, url: str, statuses=(200, 503)) -> None:
    """Wait until gunicorn answers /health (a worker may take seconds to boot under load)."""

    def up():
        if proc.proc.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{proc.output()}")
        try:
            return requests.get(f"{url}/health", timeout=10).status_code in statuses
        except requests.RequestException:
            return False

    wait_for(up, timeout=30, message=f"gunicorn at {url} to answer /health")


@pytest.fixture
def start_server(base_env, tmp_path):
    """Factory: start_server(*gunicorn_args, **env) -> base URL of a running gunicorn."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> str:
        log = tmp_path / f"gunicorn-{len(started)}.log"
        proc, url = launch_gunicorn({**base_env, **env}, log, *args)
        started.append(proc)
        wait_until_serving(proc, url)
        return url

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def live_server(app, start_server):
    """Base URL of a real gunicorn serving the app on PostgreSQL + Redis."""
    return start_server()
