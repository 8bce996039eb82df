"""A PostgreSQL restart under steady ingest: every answer is a 202 or a 503, never a 500.

A 202 is a stored event and a 503 is an event that was not stored.

The test runs its own PostgreSQL cluster (initdb in a temporary folder, on a free port) so that
restarting it disturbs nothing else, and drives a real gunicorn with concurrent clients while the
server restarts. Every 202 must be a committed row; the app must recover on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import requests

from tests.processes import flask_cli, free_port, wait_for

PASSWORD = "correct-horse"


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    assert initdb, "PostgreSQL's server programs (initdb, pg_ctl) are needed for this test"
    return Path(initdb).parent


class PrivateCluster:
    """A throw-away PostgreSQL server of our own that we may restart at will."""

    def __init__(self):
        self.bin = _bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventflow-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        # PostgreSQL refuses to run as root: run it as the postgres user then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / program), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", *extra, action
        )

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        # fast: sessions are cut and their transactions rolled back, as in a real restart.
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster():
    server = PrivateCluster()
    server.start()
    yield server
    server.stop()


def test_a_postgresql_restart_under_ingest_gives_202_or_503_never_500(
    cluster, base_env, start_server
):
    env = {**base_env, "DATABASE_URL": cluster.url}
    flask_cli(env, "db", "upgrade", check=True)
    flask_cli(env, "users", "create", "load@example.com", "--password", PASSWORD, check=True)
    url = start_server(DATABASE_URL=cluster.url)
    login = requests.post(
        f"{url}/api/v1/auth/login", json={"email": "load@example.com", "password": PASSWORD}
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    answers: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def client():
        with requests.Session() as http:
            while not stop.is_set():
                key = uuid.uuid4().hex
                try:
                    response = http.post(
                        f"{url}/api/v1/events",
                        json={"type": "LOAD", "payload": {"key": key}},
                        headers={**headers, "Idempotency-Key": key},
                        timeout=30,
                    )
                except requests.RequestException as exc:  # a dropped connection would be a bug too
                    answers.append((key, 0, repr(exc)))
                    continue
                answers.append((key, response.status_code, response.text))
                time.sleep(0.03)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    time.sleep(2)
    before_restart = len(answers)
    cluster.restart()
    time.sleep(0.5)
    cluster.restart()  # twice: the pool must recover from a second wave of dead connections
    # Back to normal on its own: new requests are accepted again.
    wait_for(
        lambda: sum(1 for _, status, _ in answers[-10:] if status == 202) == 10,
        timeout=30,
        message="ingest to recover after the restarts",
    )
    stop.set()
    for thread in clients:
        thread.join(timeout=60)

    statuses = Counter(status for _, status, _ in answers)
    assert before_restart > 20, statuses
    assert set(statuses) <= {202, 503}, [a for a in answers if a[1] not in (202, 503)][:3]
    for _, status, body in answers:
        if status == 503:
            assert '"database_unavailable"' in body
            assert "Traceback" not in body

    accepted = {key for key, status, _ in answers if status == 202}
    refused = {key for key, status, _ in answers if status == 503}
    with psycopg2.connect(cluster.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT idempotency_key FROM events")
        stored = {row[0] for row in cur.fetchall()}
    assert accepted <= stored, f"{len(accepted - stored)} accepted events were not stored"
    # Concurrent requests share one INSERT (group commit): a 503 must mean "not stored" for
    # exactly the requests of the group that failed, and never for another group's rows.
    assert not refused & stored, f"{len(refused & stored)} events answered 503 were stored"
