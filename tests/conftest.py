"""Fixtures: a migrated PostgreSQL database, Redis, the app, clients, users, workers, servers.

Tests use DATABASE_URL / REDIS_URL when set; otherwise a local `eventflow_test` database and
Redis database 15. A missing service fails the run: nothing is skipped. Starting real processes
(gunicorn, workers, flask commands, Redis) is tests/processes.py's, shared with bench/.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import redis as redis_lib
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests import processes
from tests.processes import (
    ROOT,
    Process,
    app_environment,
    flask_cli,
    launch_gunicorn,
    wait_until_serving,
)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventflow_test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
TABLES = (
    "audit_log, event_attempts, events, revoked_tokens, users, workers, stat_buckets, "
    "error_group_hours, error_group_types, error_groups, event_counts, periodic_runs, "
    "bulk_action_items, bulk_actions, payload_versions, paused_types, alert_states, "
    "alert_notices, metric_minutes"
)
# Fast pipeline settings so retry and recovery tests finish in seconds.
FAST_PIPELINE = {
    "EVENTFLOW_RETRY_BASE_SECONDS": "0.05",
    "EVENTFLOW_RETRY_MAX_SECONDS": "0.2",
    "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS": "3",
    "EVENTFLOW_RECOVERY_INTERVAL_SECONDS": "0.5",
    "EVENTFLOW_HANDLERS": "tests.handlers",
}


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


def _worker_number() -> int:
    """Which of pytest-xdist's processes this is (0 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


@pytest.fixture(scope="session")
def database_url() -> str:
    """DATABASE_URL's database, or a sibling of it per xdist process (`…_gw1`)."""
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if _worker_number():
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(path=f"{parts.path}_gw{_worker_number()}"))
    _ensure_database(url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL's database, or the ones below it per xdist process (15, then 14, …)."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if _worker_number():
        parts = urlsplit(url)
        number = int(parts.path.lstrip("/") or 0) - _worker_number()
        url = urlunsplit(parts._replace(path=f"/{number % 16}"))
    try:
        redis_lib.Redis.from_url(url).ping()
    except redis_lib.RedisError as exc:
        pytest.exit(f"Redis is not reachable at {url}: {exc}", returncode=3)
    return url


@pytest.fixture(scope="session")
def base_env(database_url, redis_url, tmp_path_factory) -> dict[str, str]:
    """Environment for the app and for worker/gunicorn subprocesses."""
    instance = str(tmp_path_factory.mktemp("instance"))
    return app_environment(
        database_url, redis_url, instance, "test", PYTHONPATH=str(ROOT), **FAST_PIPELINE
    )


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
    from eventflow.tasks.history import flush_history

    app = create_app({**base_env, "TESTING": True})
    with app.app_context():
        from eventflow.extensions import db

        # A module's shared worker may still be finishing the previous test's events: its row
        # locks can meet TRUNCATE's table locks in the other order (a deadlock PostgreSQL
        # breaks by cancelling one side). Empty the tables again then.
        for attempt in range(5):
            try:
                db.session.execute(text(f"TRUNCATE {TABLES} CASCADE"))
                db.session.commit()
                break
            except OperationalError:
                db.session.rollback()
                if attempt == 4:
                    raise
                time.sleep(0.2)
        db.session.remove()
    redis_lib.Redis.from_url(base_env["REDIS_URL"]).flushdb()
    yield app
    # Write what this app counted for the metrics history now, not from its flusher thread a
    # minute later, into a later test's tables.
    flush_history(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """Factory: make_user(email=None, password=..., admin=False, role=None) -> (id, email, role)."""
    from eventflow import users

    def make(
        email: str | None = None,
        password: str = "correct-horse",
        admin: bool = False,
        role: str | None = None,
    ):
        with app.app_context():
            user = users.create_user(
                email or f"user-{uuid.uuid4().hex[:8]}@example.com",
                password,
                admin=admin,
                role=role,
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


@pytest.fixture
def start_worker(base_env, tmp_path) -> Iterator[Callable[..., Process]]:
    """Factory: start_worker(*args, **env) -> Process running `flask --app wsgi worker`."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> Process:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = processes.start_worker({**base_env, **env}, log, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def worker(app, start_worker):
    """A running worker with two threads (the default pipeline settings of the tests)."""
    return start_worker("--workers", "2")


@pytest.fixture
def start_server(base_env, tmp_path):
    """Factory: start_server(*gunicorn_args, **env) -> base URL of a running gunicorn."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> str:
        log: Path = tmp_path / f"gunicorn-{len(started)}.log"
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
