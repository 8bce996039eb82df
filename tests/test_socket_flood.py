"""A flood of idle WebSockets from one client does not starve the API (CONTRACT section 9).

An attacker on one laptop opens 200 raw WebSocket upgrades to the default server shape
(`gunicorn -c gunicorn.conf.py`: 2 gevent workers): no cookie, no Origin, never joining a
namespace. While they are held open, /api/v1/health keeps answering, ingest keeps accepting
events, and admins already watching the dashboard keep receiving `stats`. Under gthread workers
each such socket held a request thread: the 33rd upgrade, and every request after it, waited
until a socket closed (run this file with GUNICORN_WORKER_CLASS=gthread to see it fail).
"""

from __future__ import annotations

import base64
import os
import resource
import socket
from urllib.parse import urlsplit

import pytest
import requests
import socketio

from .processes import launch_gunicorn, wait_for, wait_until_serving

FLOOD = 200
ADMINS = 5
ROUNDS = 10
# Generous on purpose: this guards against a hang, not against slowness.
ANSWER_SECONDS = 5
PASSWORD = "correct-horse"
NAMESPACE = "/dashboard"
UPGRADE = (
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n"
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to `needed` (within the hard limit) if lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="module")
def server(migrated, base_env, tmp_path_factory):
    """The default shape, booted once for the module (gunicorn.conf.py sizes its file limit)."""
    raise_open_file_limit(4 * FLOOD)  # this process holds the flood's sockets
    # The flood must stay open for the whole test whatever the machine's speed; the default
    # deadline for unauthenticated sockets (10 s) could close it part-way through.
    env = {**base_env, "EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS": "600"}
    proc, url = launch_gunicorn(env, tmp_path_factory.mktemp("web") / "gunicorn.log")
    wait_until_serving(proc, url, statuses=(200,))
    yield url
    proc.stop()


@pytest.fixture
def held():
    """The raw sockets a test opens; every one is closed at teardown, whatever happened."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


@pytest.fixture
def admin_clients():
    """Factory: admin_clients(url, token, n) -> the `stats` received by each of n admins.

    Each admin is a python-socketio client on /dashboard over WebSocket, authenticated with
    `auth: {token}`; all are disconnected at teardown.
    """
    clients: list[socketio.Client] = []

    def connect(url: str, token: str, n: int) -> list[list[dict]]:
        received = []
        for _ in range(n):
            client = socketio.Client(reconnection=False)
            clients.append(client)
            stats: list[dict] = []
            client.on("stats", stats.append, namespace=NAMESPACE)
            client.connect(
                url,
                namespaces=[NAMESPACE],
                transports=["websocket"],
                auth={"token": token},
                wait_timeout=10,
            )
            received.append(stats)
        return received

    yield connect
    for client in clients:
        if client.connected:
            client.disconnect()


def access_token(url: str, email: str) -> str:
    response = requests.post(
        f"{url}/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        timeout=ANSWER_SECONDS,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def read_status(sock: socket.socket) -> int:
    """The HTTP status of the answer to what was sent; the rest of the head is dropped."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            pytest.fail(f"the server closed the connection before answering: {data!r}")
        data += chunk
    return int(data.split(None, 2)[1])


def open_flood(url: str, held: list[socket.socket]) -> None:
    """Open FLOOD raw WebSocket upgrades one after another, each answered 101, and hold them."""
    address = urlsplit(url)
    for n in range(1, FLOOD + 1):
        sock = socket.create_connection((address.hostname, address.port), timeout=ANSWER_SECONDS)
        held.append(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(UPGRADE.format(host=address.netloc, key=key).encode())
        try:
            status = read_status(sock)
        except TimeoutError:
            pytest.fail(f"upgrade {n} of {FLOOD}: no answer within {ANSWER_SECONDS} s")
        assert status == 101, f"upgrade {n} of {FLOOD} answered {status}"


def still_open(sockets: list[socket.socket]) -> int:
    """How many of the sockets the server has not closed (what it sent is read and dropped)."""
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass  # the server closed it: recv() reached the end
        except BlockingIOError:
            count += 1  # nothing more to read, and no end: open
        except OSError:
            pass  # reset
        finally:
            sock.settimeout(ANSWER_SECONDS)
    return count


def assert_api_answers(url: str, token: str) -> None:
    """Round after round, health answers 200 and ingest 202; a hang fails the request."""
    headers = {"Authorization": f"Bearer {token}"}
    for n in range(ROUNDS):
        health = requests.get(f"{url}/api/v1/health", timeout=ANSWER_SECONDS)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok", health.text
        event = requests.post(
            f"{url}/api/v1/events",
            json={"type": "FLOOD_CHECK", "payload": {"round": n}},
            headers=headers,
            timeout=ANSWER_SECONDS,
        )
        assert event.status_code == 202, event.text


def test_two_hundred_idle_websockets_leave_health_and_ingest_answering(server, held, make_user):
    token = access_token(server, make_user().email)
    open_flood(server, held)

    assert_api_answers(server, token)
    assert still_open(held) == FLOOD  # the flood was open throughout


def test_admins_keep_receiving_stats_while_the_flood_is_open(
    server, held, make_user, admin_clients
):
    received = admin_clients(server, access_token(server, make_user(admin=True).email), ADMINS)
    open_flood(server, held)
    counts = [len(stats) for stats in received]

    assert_api_answers(server, access_token(server, make_user().email))
    # A tick a second: every admin gets two more while the flood is still open.
    wait_for(
        lambda: all(len(stats) >= n + 2 for stats, n in zip(received, counts, strict=True)),
        timeout=15,
        message="two more `stats` at every admin",
    )
    assert still_open(held) == FLOOD
