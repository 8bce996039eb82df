"""Rate limits (CONTRACT section 9): failed logins, registrations and ingest, on real gunicorn.

The server runs with low limits (3 an hour, so no window ends mid-test). Loopback owns the whole
of 127.0.0.0/8, so a test speaks from several client addresses by binding its source address.
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from requests.adapters import HTTPAdapter

from eventflow import create_app, users
from eventflow.extensions import db
from eventflow.models import Event, User

from .processes import flask_cli, free_port, launch_gunicorn, wait_until_serving

PASSWORD = "correct-horse"
LIMIT = 3
LOW_LIMITS = {
    "EVENTFLOW_RATE_LIMIT_LOGIN": f"{LIMIT}/hour",
    "EVENTFLOW_RATE_LIMIT_REGISTER": f"{LIMIT}/hour",
    "EVENTFLOW_RATE_LIMIT_INGEST": f"{LIMIT}/hour",
}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class _FromAddress(HTTPAdapter):
    """Connects from a given local address (127.0.0.2, …) instead of the default one."""

    def __init__(self, address: str):
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str = "127.0.0.1") -> requests.Session:
    """An HTTP client whose requests come from `address`."""
    http = requests.Session()
    http.mount("http://", _FromAddress(address))
    return http


def api_login(http, url: str, email: str, password: str = PASSWORD, **headers):
    body = {"email": email, "password": password}
    return http.post(f"{url}/api/v1/auth/login", json=body, headers=headers, timeout=30)


def dashboard_login(http, url: str, email: str, password: str = PASSWORD):
    form = http.get(f"{url}/dashboard/login", timeout=30)
    token = CSRF_INPUT.search(form.text).group(1)
    data = {"email": email, "password": password, "csrf_token": token, "next": ""}
    return http.post(f"{url}/dashboard/login", data=data, allow_redirects=False, timeout=30)


def retry_after(response) -> int:
    seconds = int(response.headers["Retry-After"])
    assert 1 <= seconds <= 3601, seconds  # at most the hour's window (+1 for rounding)
    return seconds


def assert_rate_limited(response) -> None:
    """A 429 with the error envelope and a Retry-After in seconds."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["message"]
    retry_after(response)


def unknown_email() -> str:
    return f"nobody-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture(scope="module")
def limited_server(migrated, base_env, tmp_path_factory):
    """One gunicorn (2 workers) with the low limits for the module; its state lives in
    PostgreSQL and Redis, which the `app` fixture empties before every test."""
    log = tmp_path_factory.mktemp("limits") / "gunicorn.log"
    proc, url = launch_gunicorn({**base_env, **LOW_LIMITS}, log, "--workers", "2")
    wait_until_serving(proc, url)
    yield url
    proc.stop()


@pytest.fixture
def server(app, limited_server) -> str:
    return limited_server


# --- failed logins ---------------------------------------------------------------------------


def test_failed_api_logins_lock_the_account_and_then_even_the_right_password_gets_429(
    server, make_user
):
    victim = make_user()
    with client_at("127.0.0.1") as http:
        for _ in range(LIMIT):
            assert api_login(http, server, victim.email, "wrong-guess").status_code == 401
        locked = api_login(http, server, victim.email)
    assert_rate_limited(locked)
    assert "access_token" not in locked.text


def test_failed_dashboard_logins_show_the_form_again_with_429_and_retry_after(server, make_user):
    admin = make_user(admin=True)
    with client_at("127.0.0.1") as http:
        for _ in range(LIMIT):
            assert dashboard_login(http, server, admin.email, "wrong-guess").status_code == 401
        locked = dashboard_login(http, server, admin.email)
        assert locked.status_code == 429
        retry_after(locked)
        assert 'name="password"' in locked.text  # the form, to try again later
        assert "Too many failed login attempts" in locked.text
        # No session was started: the dashboard still sends the visitor to the login page.
        overview = http.get(f"{server}/dashboard/", allow_redirects=False, timeout=30)
        assert overview.status_code == 302 and "/dashboard/login" in overview.headers["Location"]


def test_the_api_and_the_dashboard_count_failures_of_an_account_together(server, make_user):
    admin = make_user(admin=True)
    with client_at("127.0.0.2") as dashboard, client_at("127.0.0.3") as api:
        assert dashboard_login(dashboard, server, admin.email, "wrong-1").status_code == 401
        assert api_login(api, server, admin.email, "wrong-2").status_code == 401
        assert dashboard_login(dashboard, server, admin.email, "wrong-3").status_code == 401
        assert_rate_limited(api_login(api, server, admin.email))
        assert dashboard_login(dashboard, server, admin.email).status_code == 429


def test_a_locked_account_does_not_block_another_account_from_another_address(server, make_user):
    victim, bystander = make_user(), make_user()
    with client_at("127.0.0.1") as attacker, client_at("127.0.0.2") as elsewhere:
        for _ in range(LIMIT):
            assert api_login(attacker, server, victim.email, "wrong-guess").status_code == 401
        assert_rate_limited(api_login(attacker, server, victim.email))
        # The locked account stays locked from everywhere: the limit is per account too. But
        # those refusals tried no password, so they do not count against this address.
        for _ in range(LIMIT + 1):
            assert_rate_limited(api_login(elsewhere, server, victim.email))
        assert api_login(elsewhere, server, bystander.email).status_code == 200
        assert dashboard_login(elsewhere, server, make_user(admin=True).email).status_code == 302


def test_failed_logins_from_one_address_are_counted_across_accounts(server, make_user):
    user = make_user()
    with client_at("127.0.0.4") as sprayer, client_at("127.0.0.5") as elsewhere:
        for _ in range(LIMIT):
            assert api_login(sprayer, server, unknown_email(), "guess").status_code == 401
        assert_rate_limited(api_login(sprayer, server, user.email))
        # Refused attempts try no password, so they do not lock the account they name.
        for _ in range(LIMIT + 1):
            assert_rate_limited(api_login(sprayer, server, user.email, "wrong"))
        assert api_login(elsewhere, server, user.email).status_code == 200


def test_successful_logins_are_not_counted(server, make_user):
    user = make_user()
    with client_at("127.0.0.1") as http:
        assert api_login(http, server, user.email, "wrong-1").status_code == 401
        assert api_login(http, server, user.email, "wrong-2").status_code == 401
        for _ in range(3 * LIMIT):
            assert api_login(http, server, user.email).status_code == 200
        assert api_login(http, server, user.email, "wrong-3").status_code == 401
        assert_rate_limited(api_login(http, server, user.email))


def test_parallel_guesses_get_no_more_tries_than_the_limit(server, make_user):
    victim = make_user()

    def guess(n: int) -> int:
        with client_at("127.0.0.1") as http:  # a connection of its own
            return api_login(http, server, victim.email, f"guess-{n}").status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(guess, range(24)))
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= LIMIT, statuses
    with client_at("127.0.0.1") as http:
        assert_rate_limited(api_login(http, server, victim.email))


def test_limits_are_shared_by_every_process_of_every_server(app, base_env, tmp_path, make_user):
    """Two gunicorn masters of two workers each, one Redis: one count for them all."""
    procs = [
        launch_gunicorn({**base_env, **LOW_LIMITS}, tmp_path / f"web-{n}.log", "--workers", "2")
        for n in range(2)
    ]
    try:
        for proc, url in procs:
            wait_until_serving(proc, url)
        (_, first), (_, second) = procs
        victim = make_user()
        for n in range(LIMIT):
            with client_at("127.0.0.1") as http:  # a new connection: any worker may answer
                url = (first, second)[n % 2]
                assert api_login(http, url, victim.email, "wrong").status_code == 401
        for url in (first, second, first, second):
            with client_at("127.0.0.1") as http:
                assert_rate_limited(api_login(http, url, victim.email))
    finally:
        for proc, _ in procs:
            proc.stop()


# --- client addresses behind proxies ---------------------------------------------------------


def test_a_spoofed_x_forwarded_for_is_ignored_when_no_proxy_is_trusted(server, make_user):
    user = make_user()
    with client_at("127.0.0.1") as http:
        for n in range(LIMIT):
            spoofed = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
            assert api_login(http, server, unknown_email(), "guess", **spoofed).status_code == 401
        fresh_address = {"X-Forwarded-For": "198.51.100.99"}
        assert_rate_limited(api_login(http, server, user.email, **fresh_address))


def test_behind_one_trusted_proxy_the_forwarded_address_is_the_client(app, start_server, make_user):
    url = start_server(EVENTFLOW_PROXY_HOPS="1", **LOW_LIMITS)
    user = make_user()
    attacker, neighbour = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    with client_at("127.0.0.1") as proxy:  # every request arrives from the one proxy
        for _ in range(LIMIT):
            assert api_login(proxy, url, unknown_email(), "guess", **attacker).status_code == 401
        assert_rate_limited(api_login(proxy, url, user.email, **attacker))
        assert api_login(proxy, url, user.email, **neighbour).status_code == 200


# --- registrations ---------------------------------------------------------------------------


def test_registrations_are_limited_per_address(server, app):
    def register(http, email: str):
        body = {"email": email, "password": "long-enough"}
        return http.post(f"{server}/api/v1/auth/register", json=body, timeout=30)

    taken = unknown_email()
    with client_at("127.0.0.1") as http, client_at("127.0.0.2") as elsewhere:
        assert register(http, taken).status_code == 201
        assert register(http, taken).status_code == 409  # every attempt counts
        assert register(http, unknown_email()).status_code == 201
        refused_email = unknown_email()
        assert_rate_limited(register(http, refused_email))
        assert register(elsewhere, unknown_email()).status_code == 201
    with app.app_context():
        assert db.session.query(User).filter_by(email=refused_email).count() == 0


# --- ingest ----------------------------------------------------------------------------------


def test_ingest_is_limited_per_user_and_other_users_are_unaffected(server, app, make_user):
    alice, bob = make_user(), make_user()
    with client_at("127.0.0.1") as http:
        tokens = {}
        for name, user in (("alice", alice), ("bob", bob)):
            response = api_login(http, server, user.email)
            tokens[name] = {"Authorization": f"Bearer {response.json()['access_token']}"}

        def ingest(headers):
            body = {"type": "ORDER_CREATED", "payload": {"items": []}}
            return http.post(f"{server}/api/v1/events", json=body, headers=headers, timeout=30)

        for _ in range(LIMIT):
            assert ingest(tokens["alice"]).status_code == 202
        assert_rate_limited(ingest(tokens["alice"]))
        assert ingest(tokens["bob"]).status_code == 202
    with app.app_context():
        assert db.session.query(Event).filter_by(user_id=alice.id).count() == LIMIT


def test_ingest_without_a_valid_token_gets_401_and_uses_no_ones_allowance(server, make_user):
    user = make_user()
    with client_at("127.0.0.1") as http:
        first = api_login(http, server, user.email).json()
        second = api_login(http, server, user.email).json()
        revoked = {"Authorization": f"Bearer {first['access_token']}"}
        logout = http.post(f"{server}/api/v1/auth/logout", headers=revoked, timeout=30)
        assert logout.status_code == 204
        body = {"type": "A", "payload": {}}

        def ingest(headers):
            return http.post(f"{server}/api/v1/events", json=body, headers=headers, timeout=30)

        for headers in [{}, {"Authorization": "Bearer not-a-token"}] + [revoked] * (LIMIT + 1):
            assert ingest(headers).status_code == 401
        live = {"Authorization": f"Bearer {second['access_token']}"}
        for _ in range(LIMIT):
            assert ingest(live).status_code == 202
        assert_rate_limited(ingest(live))


def test_ingest_has_no_limit_when_none_is_set(client, auth):
    for n in range(3 * LIMIT):
        response = client.post(
            "/api/v1/events", json={"type": "A", "payload": {"n": n}}, headers=auth
        )
        assert response.status_code == 202


# --- when Redis is not there -----------------------------------------------------------------


def test_with_redis_down_logins_still_work_and_are_limited_per_process(
    app, start_server, make_user
):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    url = start_server("--workers", "1", REDIS_URL=dead_redis, **LOW_LIMITS)
    user = make_user()
    with client_at("127.0.0.1") as http:
        assert api_login(http, url, user.email).status_code == 200
        for _ in range(LIMIT):
            assert api_login(http, url, user.email, "wrong").status_code == 401
        assert_rate_limited(api_login(http, url, user.email))


def test_the_embedded_default_keeps_limits_in_memory(base_env, tmp_path):
    embedded = {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "EVENTFLOW_ENV": "development",
        "EVENTFLOW_INSTANCE_PATH": str(tmp_path),
        "EVENTFLOW_RATE_LIMIT_LOGIN": f"{LIMIT}/hour",
    }
    flask_cli({**base_env, **embedded}, "db", "upgrade", check=True)
    app = create_app({**embedded, "TESTING": True})
    with app.app_context():
        email = users.create_user("solo@example.com", PASSWORD).email
    client = app.test_client()
    for _ in range(LIMIT):
        body = {"email": email, "password": "wrong"}
        assert client.post("/api/v1/auth/login", json=body).status_code == 401
    locked = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert locked.status_code == 429
    assert locked.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(locked.headers["Retry-After"]) <= 3601
