"""The dashboard's live feed (Socket.IO namespace /dashboard) against gunicorn with 2 workers."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import jwt as pyjwt
import pytest
import redis as redis_lib
import requests
import socketio
import websocket
from flask_jwt_extended import create_access_token

from eventflow.backend import LocalState, RedisState
from eventflow.dashboard.live import BroadcastLease

from .processes import launch_gunicorn, wait_for, wait_until_serving

PASSWORD = "correct-horse"
NAMESPACE = "/dashboard"
RATES = ("ingested_per_s", "processed_per_s", "failed_per_s", "retried_per_s")
TOTALS = ("ingested", "processed", "failed", "retried")
HISTORY_SECONDS = 300  # the overview chart's five minutes
MAX_LIVE_MESSAGE_BYTES = 2048  # CONTRACT section 9: every `stats` after the first
AUTH_TIMEOUT_SECONDS = 1  # EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS for the impatient server


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


def chart(client: LiveClient) -> list[dict]:
    """The chart as the dashboard draws it: the first message's history plus each new point."""
    history, *ticks = client.stats
    points = {second["t"]: second for second in history["series"]}
    for tick in ticks:
        points[tick["point"]["t"]] = tick["point"]
    newest = max(points)
    return [points[t] for t in sorted(points) if t > newest - HISTORY_SECONDS]


def assert_every_contract_field(stats: dict) -> None:
    for key in (*RATES, "queue_depth", "dlq_size", "workers"):
        assert isinstance(stats[key], int | float) and stats[key] >= 0, key
    assert set(stats["totals"]) >= set(TOTALS)
    assert all(isinstance(stats["totals"][key], int) for key in TOTALS)
    assert set(stats["latency_ms"]) >= {"p50", "p95", "p99"}


def wire_size(stats: dict) -> int:
    """Bytes of the Socket.IO packet that carries this `stats` (as python-socketio encodes it)."""
    packet = f"42{NAMESPACE}," + json.dumps(["stats", stats], separators=(",", ":"))
    return len(packet.encode())


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
        # Totals count the current second; the chart only whole past seconds.
        done = (
            latest
            and latest["totals"]["processed"] == 3
            and sum(second["ingested"] for second in chart(client)) == 3
            and latest["workers"] >= 1
        )
        return latest if done else None

    stats = wait_for(lambda: settled(by_token), message="stats showing 3 processed events")
    wait_for(lambda: settled(by_cookie), message="the cookie client to get the same stats")

    assert_every_contract_field(stats)
    assert {k: stats["totals"][k] for k in TOTALS} == {
        "ingested": 3,
        "processed": 3,
        "failed": 0,
        "retried": 0,
    }
    assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"]
    assert stats["latency_ms"]["p95"] <= stats["latency_ms"]["p99"]
    assert stats["queue_depth"] == 0 and stats["dlq_size"] == 0
    assert len(chart(by_token)) == HISTORY_SECONDS  # the last five minutes, a point a second


def test_first_stats_brings_the_chart_history_and_later_ones_one_small_point(
    servers, worker, admin, live_client
):
    url = servers[0]
    token = api_token(url, admin.email)
    headers = {"Authorization": f"Bearer {token}"}
    client = live_client().connect(url, auth={"token": token})
    for n in range(4):
        response = requests.post(
            f"{url}/api/v1/events", json={"type": "TEST_OK", "payload": {"n": n}}, headers=headers
        )
        assert response.status_code == 202
    wait_for(
        lambda: len(client.stats) >= 4 and sum(s["ingested"] for s in chart(client)) == 4,
        timeout=15,
        message="the history and three ticks, the chart counting all 4 events",
    )

    first, *later = client.stats
    seconds = [second["t"] for second in first["series"]]
    assert seconds == list(range(first["at"] - HISTORY_SECONDS, first["at"]))
    assert_every_contract_field(first)
    for stats in later:
        assert "series" not in stats, "the history is sent once, not every second"
        assert_every_contract_field(stats)
        assert stats["point"]["t"] == stats["at"] - 1  # the second that just ended
        assert set(stats["point"]) >= {"t", *TOTALS}
        assert wire_size(stats) <= MAX_LIVE_MESSAGE_BYTES, stats
    # One new point a second, following on from the history.
    assert [s["at"] for s in later] == sorted({s["at"] for s in later})
    assert later[0]["point"]["t"] > seconds[-1]


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
    assert as_user.refusals == [{"message": "admins and viewers only"}]
    refused(url, live_client)  # no token, no cookie
    refused(url, live_client, auth={"token": expired})
    refused(url, live_client, auth={"token": forged})
    refused(url, live_client, auth={"token": "not.a.jwt"})
    # A page on another origin cannot ride on an admin's session cookie.
    cookie = session_cookie(url, admin.email)
    refused(url, live_client, headers={"Cookie": cookie, "Origin": "http://evil.example"})
    # ... while the same cookie from the dashboard's own origin gets in.
    assert live_client().connect(url, headers={"Cookie": cookie}).sio.connected


def test_viewers_get_the_live_feed_by_token_and_by_cookie(servers, make_user, live_client):
    url = servers[0]
    viewer = make_user(role="viewer")
    by_token = live_client().connect(url, auth={"token": api_token(url, viewer.email)})
    by_cookie = live_client().connect(url, headers={"Cookie": session_cookie(url, viewer.email)})
    wait_for(lambda: by_token.stats and by_cookie.stats, message="stats for the viewer")
    assert_every_contract_field(by_token.stats[-1])


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
    first = BroadcastLease(RedisState(redis), "web-1", key="test:lease", ttl_ms=5000)
    second = BroadcastLease(RedisState(redis), "web-2", key="test:lease", ttl_ms=5000)
    assert first.hold() and first.hold()  # taken, then renewed
    assert not second.hold()
    second.release()  # not the holder: nothing happens
    assert not second.hold()
    first.release()
    assert second.hold() and not first.hold()
    redis.pexpire("test:lease", 1)  # the holder died and its lease ran out
    wait_for(lambda: redis.exists("test:lease") == 0, timeout=5)
    assert first.hold()


def test_without_redis_the_lease_is_the_process_own_and_behaves_alike():
    shared = LocalState()  # the embedded default's: one web process
    first = BroadcastLease(shared, "web-1", key="lease", ttl_ms=60_000)
    second = BroadcastLease(shared, "web-2", key="lease", ttl_ms=60_000)
    assert first.hold() and first.hold()
    assert not second.hold()
    second.release()
    assert not second.hold()
    first.release()
    assert second.hold() and not first.hold()
    lapsing = BroadcastLease(shared, "web-3", key="short", ttl_ms=1)
    assert lapsing.hold()
    wait_for(lambda: BroadcastLease(shared, "web-4", key="short").hold(), timeout=5)


@pytest.fixture
def impatient_server(app, start_server):
    """Factory: impatient_server(worker_class=None) -> URL of a one-worker gunicorn that closes
    connections not authenticated within AUTH_TIMEOUT_SECONDS."""

    def start(worker_class: str | None = None) -> str:
        env = {
            "GUNICORN_WORKERS": "1",
            "EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS": str(AUTH_TIMEOUT_SECONDS),
        }
        if worker_class:
            env["GUNICORN_WORKER_CLASS"] = worker_class
        return start_server(**env)

    return start


def raw_websocket(url: str) -> websocket.WebSocket:
    """A bare Engine.IO WebSocket, as any script can open one: handshake read, nothing sent."""
    ws = websocket.create_connection(
        url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10
    )
    assert ws.recv().startswith("0{"), "the Engine.IO handshake"
    return ws


def closed_by_server(ws: websocket.WebSocket, within: float) -> bool:
    """Read until the server closes the connection; False if it is still open after `within`."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            if not ws.recv():  # the close frame
                return True
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return True
    return False


@pytest.mark.parametrize("worker_class", [None, "gthread"], ids=["gevent", "threads"])
def test_unauthenticated_websockets_are_closed_after_the_auth_timeout(
    impatient_server, worker_class, make_user
):
    url = impatient_server(worker_class)
    # Logged in first: the sockets below have only the auth timeout to say who they are.
    token = api_token(url, make_user().email)
    silent = raw_websocket(url)  # never joins a namespace
    anonymous = raw_websocket(url)
    anonymous.send("40/dashboard,")  # joins /dashboard without credentials: refused
    assert anonymous.recv().startswith("44/dashboard,"), "the refusal"
    as_user = raw_websocket(url)
    as_user.send("40/dashboard," + json.dumps({"token": token}))  # not an admin: refused
    assert as_user.recv().startswith("44/dashboard,"), "the refusal"
    default_namespace = raw_websocket(url)
    default_namespace.send("40")  # the default namespace needs no login, but is no login either
    assert default_namespace.recv().startswith("40"), "joined /"

    margin = 5
    for name, ws in [
        ("silent", silent),
        ("anonymous", anonymous),
        ("non-admin", as_user),
        ("default namespace", default_namespace),
    ]:
        assert closed_by_server(ws, AUTH_TIMEOUT_SECONDS + margin), f"{name} is still open"
        ws.close()


def test_admin_stays_connected_past_the_auth_timeout(impatient_server, admin, live_client):
    url = impatient_server()
    client = live_client().connect(url, auth={"token": api_token(url, admin.email)})
    connected_at = time.time()
    wait_for(
        lambda: any(s["at"] > connected_at + 3 * AUTH_TIMEOUT_SECONDS for s in client.stats),
        timeout=15,
        message="stats still arriving well after the auth timeout",
    )
    assert client.sio.connected
