"""The dashboard's live feed (Socket.IO namespace /dashboard) against gunicorn with 2 workers."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import jwt as pyjwt
import pytest
import redis as redis_lib
import requests
import socketio
from flask_jwt_extended import create_access_token

from eventflow.dashboard.live import BroadcastLease

from .conftest import launch_gunicorn, wait_for, wait_until_serving

PASSWORD = "correct-horse"
NAMESPACE = "/dashboard"
RATES = ("ingested_per_s", "processed_per_s", "failed_per_s", "retried_per_s")
TOTALS = ("ingested", "processed", "failed", "retried")


@pytest.fixture(scope="module")
def shared_servers(migrated, base_env, tmp_path_factory):
    """Two gunicorns of two workers each, booted in parallel once for the module.

    Their state lives in PostgreSQL and Redis, which the `app` fixture empties before every
    test.
    """
    logs = tmp_path_factory.mktemp("web")
    env = {**base_env, "GUNICORN_WORKERS": "2"}
    launched = [launch_gunicorn(env, logs / f"gunicorn-{n}.log") for n in range(2)]
    for proc, url in launched:
        wait_until_serving(proc, url, statuses=(200,))
    yield [url for _, url in launched]
    for proc, _ in launched:
        proc.stop()


@pytest.fixture
def servers(app, shared_servers) -> list[str]:
    """Base URLs of the two servers, in front of a freshly emptied database."""
    return shared_servers


class LiveClient:
    """A python-socketio client on /dashboard that keeps every `stats` payload it receives."""

    def __init__(self):
        self.sio = socketio.Client(reconnection=False)
        self.stats: list[dict] = []
        self.refusals: list[object] = []
        self.sio.on("stats", self.stats.append, namespace=NAMESPACE)
        self.sio.on("connect_error", self.refusals.append, namespace=NAMESPACE)

    def connect(self, url: str, *, auth: dict | None = None, headers: dict | None = None):
        self.sio.connect(
            url,
            namespaces=[NAMESPACE],
            transports=["websocket"],
            auth=auth,
            headers=headers or {},
            wait_timeout=10,
        )
        return self


@pytest.fixture
def live_client():
    """Factory: live_client() -> a LiveClient, disconnected at teardown (before the servers)."""
    clients: list[LiveClient] = []

    def make() -> LiveClient:
        clients.append(LiveClient())
        return clients[-1]

    yield make
    for client in clients:
        if client.sio.connected:
            client.sio.disconnect()


@pytest.fixture
def admin(make_user):
    return make_user(admin=True)


def api_token(url: str, email: str) -> str:
    response = requests.post(
        f"{url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def session_cookie(url: str, email: str) -> str:
    """Log in through the dashboard's form; return the Cookie header of the session."""
    browser = requests.Session()
    form = browser.get(f"{url}/dashboard/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    response = browser.post(
        f"{url}/dashboard/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        timeout=10,
    )
    assert response.url.endswith("/dashboard/"), response.text
    return f"session={browser.cookies['session']}"


def refused(url: str, live_client, **connect_args) -> LiveClient:
    """Connect and expect a refusal; return the client (its refusals hold the reason)."""
    client = live_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, **connect_args)
    assert not client.stats
    return client


def test_admin_receives_stats_with_every_contract_field(servers, worker, admin, live_client):
    url = servers[0]
    token = api_token(url, admin.email)
    by_token = live_client().connect(url, auth={"token": token})
    by_cookie = live_client().connect(url, headers={"Cookie": session_cookie(url, admin.email)})

    headers = {"Authorization": f"Bearer {token}"}
    for n in range(3):
        response = requests.post(
            f"{url}/api/v1/events", json={"type": "TEST_OK", "payload": {"n": n}}, headers=headers
        )
        assert response.status_code == 202

    def settled(client):
        latest = client.stats[-1] if client.stats else None
        # Totals count the current second; the chart's series only whole past seconds.
        done = (
            latest
            and latest["totals"]["processed"] == 3
            and sum(second["ingested"] for second in latest["series"]) == 3
            and latest["workers"] >= 1
        )
        return latest if done else None

    stats = wait_for(lambda: settled(by_token), message="stats showing 3 processed events")
    wait_for(lambda: settled(by_cookie), message="the cookie client to get the same stats")

    for key in (*RATES, "queue_depth", "dlq_size", "workers"):
        assert isinstance(stats[key], int | float) and stats[key] >= 0, key
    assert {k: stats["totals"][k] for k in TOTALS} == {
        "ingested": 3,
        "processed": 3,
        "failed": 0,
        "retried": 0,
    }
    assert set(stats["latency_ms"]) >= {"p50", "p95", "p99"}
    assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"]
    assert stats["latency_ms"]["p95"] <= stats["latency_ms"]["p99"]
    assert stats["queue_depth"] == 0 and stats["dlq_size"] == 0
    assert len(stats["series"]) == 300  # the chart's last five minutes, a point a second


def test_non_admins_anonymous_and_forged_clients_are_refused(
    servers, app, admin, make_user, live_client
):
    url = servers[0]
    user = make_user()
    with app.app_context():
        expired = create_access_token(
            identity=str(admin.id),
            additional_claims={"role": "admin"},
            expires_delta=timedelta(seconds=-5),
        )
    forged = pyjwt.encode(
        {"sub": str(admin.id), "role": "admin", "type": "access", "exp": time.time() + 60},
        "someone-elses-secret-key-of-decent-length",
        algorithm="HS256",
    )

    as_user = refused(url, live_client, auth={"token": api_token(url, user.email)})
    assert as_user.refusals == [{"message": "admins only"}]
    refused(url, live_client)  # no token, no cookie
    refused(url, live_client, auth={"token": expired})
    refused(url, live_client, auth={"token": forged})
    refused(url, live_client, auth={"token": "not.a.jwt"})
    # A page on another origin cannot ride on an admin's session cookie.
    cookie = session_cookie(url, admin.email)
    refused(url, live_client, headers={"Cookie": cookie, "Origin": "http://evil.example"})
    # ... while the same cookie from the dashboard's own origin gets in.
    assert live_client().connect(url, headers={"Cookie": cookie}).sio.connected


def test_one_copy_of_each_tick_reaches_every_client_on_every_process(servers, admin, live_client):
    # Two servers of two workers each: the clients sit in at least two different processes.
    token = api_token(servers[0], admin.email)
    clients = [live_client().connect(url, auth={"token": token}) for url in servers for _ in (1, 2)]
    start = time.time()

    def ticks(client) -> list[int]:
        return [s["at"] for s in client.stats if s["at"] > start]

    wait_for(
        lambda: all(len(ticks(c)) >= 4 for c in clients),
        timeout=15,
        message="four ticks at every client",
    )
    for client in clients:
        seen = ticks(client)
        # One broadcaster: each second arrives once, in order (N broadcasters would repeat it).
        assert seen == sorted(set(seen)), seen
    common = set.intersection(*(set(ticks(c)) for c in clients))
    assert len(common) >= 3, [ticks(c) for c in clients]


def test_lease_lets_one_process_broadcast_at_a_time(app, redis_url):
    redis = redis_lib.Redis.from_url(redis_url)
    first = BroadcastLease(redis, "web-1", key="test:lease", ttl_ms=5000)
    second = BroadcastLease(redis, "web-2", key="test:lease", ttl_ms=5000)
    assert first.hold() and first.hold()  # taken, then renewed
    assert not second.hold()
    second.release()  # not the holder: nothing happens
    assert not second.hold()
    first.release()
    assert second.hold() and not first.hold()
    redis.pexpire("test:lease", 1)  # the holder died and its lease ran out
    wait_for(lambda: redis.exists("test:lease") == 0, timeout=5)
    assert first.hold()
