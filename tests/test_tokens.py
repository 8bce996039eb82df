"""Tokens and sessions can be taken back: refresh, logout, password change, demotion, deletion.

Each test attacks a real gunicorn (two worker processes) on PostgreSQL + Redis the way someone
holding an old token or cookie would.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import jwt
import pytest
import requests

from eventflow.config import DEV_JWT_SECRET_KEY
from tests.processes import flask_cli

PASSWORD = "correct-horse"
STRONG = {"SECRET_KEY": "s" * 40, "JWT_SECRET_KEY": "j" * 40}
EVENT = {"type": "ORDER_CREATED", "payload": {"items": []}}


def login(url: str, email: str, password: str = PASSWORD) -> dict:
    response = requests.post(
        f"{url}/api/v1/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture
def server(app, start_server):
    return start_server("-w", "2")


def test_login_returns_access_and_refresh_tokens_and_refresh_gives_a_working_token(
    server, make_user
):
    user = make_user()
    tokens = login(server, user.email)
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "Bearer"

    refreshed = requests.post(
        f"{server}/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"])
    )
    assert refreshed.status_code == 200
    assert refreshed.json()["access_token"] != tokens["access_token"]
    created = requests.post(
        f"{server}/api/v1/events", json=EVENT, headers=bearer(refreshed.json()["access_token"])
    )
    assert created.status_code == 202


def test_an_access_token_cannot_refresh_and_a_refresh_token_cannot_ingest(server, make_user):
    tokens = login(server, make_user().email)
    assert (
        requests.post(f"{server}/api/v1/auth/refresh", headers=bearer(tokens["access_token"]))
    ).status_code == 401
    ingest = requests.post(
        f"{server}/api/v1/events", json=EVENT, headers=bearer(tokens["refresh_token"])
    )
    assert ingest.status_code == 401


def test_logout_revokes_the_access_and_refresh_token_at_once_in_every_process(server, make_user):
    user = make_user()
    tokens = login(server, user.email)
    other_session = login(server, user.email)
    assert (
        requests.post(
            f"{server}/api/v1/auth/logout", headers=bearer(tokens["access_token"])
        ).status_code
        == 204
    )

    # Many requests, so both gunicorn processes are asked.
    for _ in range(6):
        listed = requests.get(f"{server}/api/v1/events", headers=bearer(tokens["access_token"]))
        assert listed.status_code == 401 and error_code(listed) == "token_revoked"
        ingest = requests.post(
            f"{server}/api/v1/events", json=EVENT, headers=bearer(tokens["access_token"])
        )
        assert ingest.status_code == 401 and error_code(ingest) == "token_revoked"
    refreshed = requests.post(
        f"{server}/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"])
    )
    assert refreshed.status_code == 401 and error_code(refreshed) == "token_revoked"
    # Logging one session out leaves the user's other sessions alone.
    ok = requests.get(f"{server}/api/v1/events", headers=bearer(other_session["access_token"]))
    assert ok.status_code == 200


def test_a_revoked_token_cannot_replay_an_idempotent_request(server, make_user):
    tokens = login(server, make_user().email)
    headers = {**bearer(tokens["access_token"]), "Idempotency-Key": "order-7"}
    assert requests.post(f"{server}/api/v1/events", json=EVENT, headers=headers).status_code == 202
    requests.post(f"{server}/api/v1/auth/logout", headers=bearer(tokens["refresh_token"]))
    again = requests.post(f"{server}/api/v1/events", json=EVENT, headers=headers)
    assert again.status_code == 401 and error_code(again) == "token_revoked"


def test_revocation_survives_a_restart_of_the_web_server(app, start_server, make_user):
    first = start_server()
    tokens = login(first, make_user().email)
    requests.post(f"{first}/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    second = start_server()  # a new server: nothing of the first one's memory
    response = requests.get(f"{second}/api/v1/events", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401 and error_code(response) == "token_revoked"


def test_password_change_revokes_every_token_of_the_user(server, make_user):
    user = make_user()
    phone, laptop = login(server, user.email), login(server, user.email)
    wrong = requests.post(
        f"{server}/api/v1/auth/password",
        json={"current_password": "not-it-at-all", "new_password": "brand-new-pass"},
        headers=bearer(phone["access_token"]),
    )
    assert wrong.status_code == 403
    assert requests.get(f"{server}/api/v1/events", headers=bearer(laptop["access_token"])).ok

    changed = requests.post(
        f"{server}/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "brand-new-pass"},
        headers=bearer(phone["access_token"]),
    )
    assert changed.status_code == 204
    for token in (phone["access_token"], laptop["access_token"]):
        response = requests.get(f"{server}/api/v1/events", headers=bearer(token))
        assert response.status_code == 401 and error_code(response) == "token_revoked"
        ingest = requests.post(f"{server}/api/v1/events", json=EVENT, headers=bearer(token))
        assert ingest.status_code == 401
    for token in (phone["refresh_token"], laptop["refresh_token"]):
        assert (
            requests.post(f"{server}/api/v1/auth/refresh", headers=bearer(token)).status_code == 401
        )
    old = requests.post(
        f"{server}/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    assert old.status_code == 401
    assert requests.get(
        f"{server}/api/v1/events",
        headers=bearer(login(server, user.email, "brand-new-pass")["access_token"]),
    ).ok


def test_a_too_short_new_password_is_refused_and_changes_nothing(server, make_user):
    user = make_user()
    tokens = login(server, user.email)
    response = requests.post(
        f"{server}/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=bearer(tokens["access_token"]),
    )
    assert response.status_code == 400 and error_code(response) == "invalid_password"
    assert requests.get(f"{server}/api/v1/events", headers=bearer(tokens["access_token"])).ok
    login(server, user.email)


def test_a_demoted_admin_loses_admin_rights_on_the_next_request(server, make_user, base_env):
    admin = make_user(admin=True)
    tokens = login(server, admin.email)
    assert (
        requests.get(f"{server}/api/v1/dlq", headers=bearer(tokens["access_token"])).status_code
        == 200
    )

    flask_cli(base_env, "users", "set-role", admin.email, "user", check=True)
    for _ in range(4):
        response = requests.get(f"{server}/api/v1/dlq", headers=bearer(tokens["access_token"]))
        assert response.status_code == 403 and error_code(response) == "forbidden"
    # Still a user: their own events work.
    assert requests.get(f"{server}/api/v1/events", headers=bearer(tokens["access_token"])).ok


def test_a_deleted_user_is_refused_on_the_next_request(server, make_user, base_env):
    user = make_user()
    tokens = login(server, user.email)
    assert (
        requests.post(
            f"{server}/api/v1/events", json=EVENT, headers=bearer(tokens["access_token"])
        ).status_code
        == 202
    )

    deleted = flask_cli(base_env, "users", "delete", user.email, "--yes", check=True)
    assert "1 event(s)" in deleted.stdout
    for _ in range(4):
        listed = requests.get(f"{server}/api/v1/events", headers=bearer(tokens["access_token"]))
        assert listed.status_code == 401 and error_code(listed) == "invalid_token"
        ingest = requests.post(
            f"{server}/api/v1/events", json=EVENT, headers=bearer(tokens["access_token"])
        )
        assert ingest.status_code == 401
    refreshed = requests.post(
        f"{server}/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"])
    )
    assert refreshed.status_code == 401


def test_a_token_forged_with_the_development_key_is_refused_in_production(
    app, start_server, make_user
):
    admin = make_user(admin=True)
    url = start_server(EVENTFLOW_ENV="production", **STRONG)
    now = int(time.time())
    forged = jwt.encode(
        {
            "sub": str(admin.id),
            "role": "admin",
            "type": "access",
            "sid": "x",
            "gen": 0,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "forged",
            "fresh": False,
        },
        DEV_JWT_SECRET_KEY,
        algorithm="HS256",
    )
    response = requests.get(f"{url}/api/v1/dlq", headers=bearer(forged))
    assert response.status_code == 401 and error_code(response) == "invalid_token"


def test_a_token_without_a_session_is_refused(app, server, make_user):
    from flask_jwt_extended import create_access_token

    user = make_user()
    with app.app_context():
        sessionless = create_access_token(
            identity=str(user.id),
            additional_claims={"role": "admin"},
            expires_delta=timedelta(minutes=5),
        )
    response = requests.get(f"{server}/api/v1/events", headers=bearer(sessionless))
    assert response.status_code == 401 and error_code(response) == "invalid_token"


# --- dashboard sessions ----------------------------------------------------------------------

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def dashboard_login(url: str, email: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(f"{url}/dashboard/login")
    token = CSRF_INPUT.search(page.text).group(1)
    response = browser.post(
        f"{url}/dashboard/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token, "next": ""},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text
    return browser


def sees_dashboard(url: str, cookies) -> bool:
    response = requests.get(f"{url}/dashboard/events", cookies=cookies, allow_redirects=False)
    if response.status_code == 302:
        assert "/dashboard/login" in response.headers["Location"]
        return False
    assert response.status_code == 200
    return True


def test_a_copied_dashboard_cookie_is_dead_after_logout(server, make_user):
    admin = make_user(admin=True)
    browser = dashboard_login(server, admin.email)
    stolen = browser.cookies.get_dict()
    assert sees_dashboard(server, stolen)

    page = browser.get(f"{server}/dashboard/")
    token = CSRF_INPUT.search(page.text).group(1)
    browser.post(f"{server}/dashboard/logout", data={"csrf_token": token})
    for _ in range(4):
        assert not sees_dashboard(server, stolen)


def test_dashboard_session_cookie_is_httponly_and_lax(server, make_user):
    admin = make_user(admin=True)
    browser = requests.Session()
    page = browser.get(f"{server}/dashboard/login")
    token = CSRF_INPUT.search(page.text).group(1)
    response = browser.post(
        f"{server}/dashboard/login",
        data={"email": admin.email, "password": PASSWORD, "csrf_token": token, "next": ""},
        allow_redirects=False,
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_a_password_change_ends_dashboard_sessions_too(server, make_user):
    admin = make_user(admin=True)
    browser = dashboard_login(server, admin.email)
    tokens = login(server, admin.email)
    requests.post(
        f"{server}/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "another-pass-1"},
        headers=bearer(tokens["access_token"]),
    )
    assert not sees_dashboard(server, browser.cookies.get_dict())


def test_an_idle_dashboard_session_times_out(app, start_server, make_user):
    url = start_server(EVENTFLOW_SESSION_IDLE_SECONDS="1.5")
    browser = dashboard_login(url, make_user(admin=True).email)
    assert sees_dashboard(url, browser.cookies.get_dict())
    time.sleep(2)
    assert not sees_dashboard(url, browser.cookies.get_dict())


def test_an_active_dashboard_session_still_ends_at_its_absolute_limit(app, start_server, make_user):
    url = start_server(EVENTFLOW_SESSION_MAX_SECONDS="2.5")
    browser = dashboard_login(url, make_user(admin=True).email)
    for _ in range(3):  # busy the whole time: never idle
        assert sees_dashboard(url, browser.cookies.get_dict())
        time.sleep(0.5)
    time.sleep(1.5)
    assert not sees_dashboard(url, browser.cookies.get_dict())


def test_a_demoted_admin_is_sent_to_the_login_page(server, make_user, base_env):
    admin = make_user(admin=True)
    browser = dashboard_login(server, admin.email)
    flask_cli(base_env, "users", "set-role", admin.email, "user", check=True)
    assert not sees_dashboard(server, browser.cookies.get_dict())
