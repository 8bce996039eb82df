"""Security headers (CONTRACT section 9) on every kind of response, from a real gunicorn."""

from __future__ import annotations

import os
import re

import pytest
import requests
from playwright.sync_api import sync_playwright

from .processes import launch_gunicorn, wait_until_serving
from .test_rate_limits import client_at

PASSWORD = "correct-horse"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
PRODUCTION_SECRETS = {
    "EVENTFLOW_ENV": "production",
    "SECRET_KEY": "s" * 48,
    "JWT_SECRET_KEY": "j" * 48,
}


def assert_headers_of_every_response(response) -> None:
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff", response.url
    assert headers["Referrer-Policy"] == "same-origin", response.url
    assert headers["Server"] == "gunicorn", response.url  # no version number
    assert "Strict-Transport-Security" not in headers, response.url  # this was plain HTTP


def assert_page_headers(response) -> None:
    """What every page (dashboard, login, error pages) must carry: no framing, no inline script."""
    assert_headers_of_every_response(response)
    policy = response.headers["Content-Security-Policy"]
    assert policy == POLICY, response.url
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY", response.url


def dashboard_session(url: str, email: str) -> requests.Session:
    http = requests.Session()
    token = CSRF_INPUT.search(http.get(f"{url}/dashboard/login", timeout=30).text).group(1)
    data = {"email": email, "password": PASSWORD, "csrf_token": token, "next": ""}
    response = http.post(f"{url}/dashboard/login", data=data, allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text
    return http


@pytest.fixture(scope="module")
def plain_server(migrated, base_env, tmp_path_factory):
    """One gunicorn with the default settings (no trusted proxy) for the module."""
    proc, url = launch_gunicorn(base_env, tmp_path_factory.mktemp("headers") / "gunicorn.log")
    wait_until_serving(proc, url)
    yield url
    proc.stop()


@pytest.fixture
def server(app, plain_server) -> str:
    return plain_server  # the app fixture has emptied PostgreSQL and Redis


def test_every_dashboard_page_and_fragment_sends_the_policy_and_refuses_framing(server, make_user):
    admin = make_user(admin=True)
    login = requests.post(
        f"{server}/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD}
    )
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    event = requests.post(
        f"{server}/api/v1/events", json={"type": "A", "payload": {}}, headers=bearer, timeout=30
    ).json()["eventId"]
    with dashboard_session(server, admin.email) as http:
        for path in ("/", "/events", "/events?status=FAILED", "/dlq", f"/events/{event}"):
            page = http.get(f"{server}/dashboard{path}", timeout=30)
            assert page.status_code == 200, path
            assert_page_headers(page)
        fragment = http.get(f"{server}/dashboard/events", headers={"HX-Request": "true"})
        assert fragment.status_code == 200
        assert_page_headers(fragment)


def test_the_login_page_redirects_and_error_pages_send_the_headers(server, make_user):
    with requests.Session() as http:
        form = http.get(f"{server}/dashboard/login", timeout=30)
        assert form.status_code == 200
        assert_page_headers(form)
        token = CSRF_INPUT.search(form.text).group(1)
        data = {"email": make_user(admin=True).email, "password": "wrong", "csrf_token": token}
        refused = http.post(f"{server}/dashboard/login", data=data, timeout=30)
        assert refused.status_code == 401
        assert_page_headers(refused)
        for path, status in (("/dashboard/", 302), ("/", 302), ("/no-such-page", 404)):
            response = http.get(f"{server}{path}", allow_redirects=False, timeout=30)
            assert response.status_code == status, path
            assert_page_headers(response)
        script = http.get(f"{server}/static/js/dashboard.js", timeout=30)
        assert script.status_code == 200
        assert_headers_of_every_response(script)


def test_api_responses_and_api_errors_send_nosniff_and_the_referrer_policy(server, make_user):
    user = make_user()
    responses = [
        requests.get(f"{server}/api/v1/health", timeout=30),
        requests.get(f"{server}/health", timeout=30),
        requests.post(
            f"{server}/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}
        ),
        requests.post(f"{server}/api/v1/auth/login", json={"email": user.email, "password": "x"}),
        requests.get(f"{server}/api/v1/events", timeout=30),
        requests.get(f"{server}/api/v1/no-such-route", timeout=30),
        requests.delete(f"{server}/api/v1/health", timeout=30),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 401, 401, 404, 405]
    for response in responses:
        assert_headers_of_every_response(response)
        assert response.headers["Content-Type"].startswith("application/json")


def test_a_browser_refuses_to_show_dashboard_pages_inside_a_frame(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            refusals: list[str] = []
            page.on("console", lambda message: refusals.append(message.text))
            for path in ("/dashboard/login", "/dashboard/"):
                page.set_content(f'<iframe src="{server}{path}"></iframe>', wait_until="load")
                framed = page.main_frame.child_frames[0]
                assert not framed.url.startswith(server), framed.url  # an error page instead
                assert framed.locator("form").count() == 0
            assert any("frame-ancestors 'none'" in text for text in refusals), refusals
        finally:
            browser.close()


def test_hsts_only_when_a_trusted_proxy_says_the_request_came_over_https(app, start_server, server):
    behind_proxy = start_server(EVENTFLOW_PROXY_HOPS="1")
    https = {"X-Forwarded-Proto": "https"}
    for path in ("/dashboard/login", "/api/v1/health"):
        secure = requests.get(f"{behind_proxy}{path}", headers=https, timeout=30)
        assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
        plain = requests.get(f"{behind_proxy}{path}", timeout=30)
        assert "Strict-Transport-Security" not in plain.headers
        # With no trusted proxy the header is the client's word, and proves nothing. (From
        # 127.0.0.2: gunicorn itself trusts X-Forwarded-Proto from 127.0.0.1, its default
        # forwarded_allow_ips.)
        with client_at("127.0.0.2") as client:
            spoofed = client.get(f"{server}{path}", headers=https, timeout=30)
        assert "Strict-Transport-Security" not in spoofed.headers


def test_plain_http_is_never_redirected_and_cookies_are_secure_only_in_production(
    app, start_server, server
):
    production = start_server(**PRODUCTION_SECRETS)
    for url, secure in ((production, True), (server, False)):
        page = requests.get(f"{url}/dashboard/login", allow_redirects=False, timeout=30)
        assert page.status_code == 200  # served as asked: no redirect to https
        cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure, cookie


def test_the_server_header_gives_no_version(server):
    for path in ("/health", "/dashboard/login", "/no-such-page"):
        server_header = requests.get(f"{server}{path}", timeout=30).headers["Server"]
        assert server_header == "gunicorn"
        assert not re.search(r"\d", server_header)
