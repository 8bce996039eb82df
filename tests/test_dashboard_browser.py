"""The dashboard in headless Chromium against gunicorn (2 workers), PostgreSQL and Redis.

Screenshots of every page land in test-artifacts/dashboard/ (plus the last view of each test).
Tests list `page` after the server fixtures, so the tab (and its WebSocket) closes before
the server stops. Every tab fails its test on a JavaScript error or on anything the pages'
Content-Security-Policy blocks (inline script, inline style, eval, another origin).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from types import SimpleNamespace

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from eventflow import users
from eventflow.extensions import db
from eventflow.models import Event, Status
from eventflow.tasks.history import HISTORY_KEY

from .pipeline import statuses, wait_terminal
from .processes import ROOT, Process, free_port, launch_gunicorn, wait_until_serving

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct-horse"
# The promise: tiles and chart move within 2 s of an ingest.
LIVE_UPDATE_MS = 2_000
CHART_SECONDS = 300  # the overview chart's five minutes
# Runs before the page's own scripts in every document of the tab; the browser reports every
# Content-Security-Policy block as this event (and on the console).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"}` +
      ` in ${event.sourceFile || document.location.pathname}:${event.lineNumber}` +
      (event.sample ? ` (${event.sample})` : "")
  );
});
"""


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser tab (own cookies) on a laptop-sized screen."""
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    violations: list[str] = []

    def on_violation(report: str) -> None:
        violations.append(report)

    def on_console(message) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    context.expose_function("reportCspViolation", on_violation)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", on_console)
    yield tab
    tab.screenshot(path=ARTIFACTS / f"last-{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


@pytest.fixture
def admin(make_user):
    return make_user(email=f"admin-{uuid.uuid4().hex[:6]}@example.com", admin=True)


def serve_dashboard(env: dict, log_path, port: int | None = None) -> tuple[Process, str]:
    """Start gunicorn (2 workers, gunicorn.conf.py) and wait until /health answers 200."""
    # The module shares this server: its metrics-history counts wait for its exit instead of
    # landing, once a minute, in the middle of a later test (the History chart test reads them).
    env = {**env, "GUNICORN_WORKERS": "2", "EVENTFLOW_METRICS_FLUSH_SECONDS": "86400"}
    proc, url = launch_gunicorn(env, log_path, port=port)
    wait_until_serving(proc, url, statuses=(200,))
    return proc, url


@pytest.fixture(scope="module")
def shared_server(migrated, base_env, tmp_path_factory):
    """One gunicorn for the module: its state lives in PostgreSQL and Redis, which the `app`
    fixture empties before every test, so tests do not pay for a server boot each."""
    proc, url = serve_dashboard(base_env, tmp_path_factory.mktemp("web") / "gunicorn.log")
    yield url
    proc.stop()


@pytest.fixture
def live_server(app, shared_server) -> str:
    """Base URL of a real gunicorn serving a freshly emptied database (shadows conftest's)."""
    return shared_server


@pytest.fixture
def serve(app, base_env, tmp_path):
    """Factory: serve(port) -> URL of a new gunicorn; `crash()` kills the last one started."""
    procs: list[Process] = []

    def start(port: int) -> str:
        proc, url = serve_dashboard(base_env, tmp_path / f"web-{len(procs)}.log", port)
        procs.append(proc)
        return url

    yield SimpleNamespace(start=start, crash=lambda: procs[-1].kill())
    for proc in procs:
        proc.stop()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def log_in(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def api_headers(base_url: str, email: str) -> dict[str, str]:
    response = requests.post(
        f"{base_url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def ingest(base_url: str, headers: dict, event_type: str, payload: dict | None = None) -> str:
    response = requests.post(
        f"{base_url}/api/v1/events",
        json={"type": event_type, "payload": payload or {}},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return response.json()["eventId"]


def stat(page: Page, name: str):
    """The overview tile showing one value of the `stats` payload."""
    return page.locator(f'.tile [data-stat="{name}"]')


def test_admin_logs_in_and_sees_tiles_and_chart_move_as_events_arrive(
    live_server, worker, admin, page
):
    log_in(page, live_server, admin.email)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Live")
    expect(stat(page, "totals.ingested")).to_have_text("0")
    expect(page.locator('[data-series-total="ingested"]')).to_have_text("0")

    headers = api_headers(live_server, admin.email)
    for n in range(5):
        ingest(live_server, headers, "TEST_OK", {"n": n})

    expect(stat(page, "totals.ingested")).to_have_text("5", timeout=LIVE_UPDATE_MS)
    expect(page.locator('[data-series-total="ingested"]')).to_have_text("5", timeout=LIVE_UPDATE_MS)
    expect(stat(page, "ingested_per_s")).not_to_have_text("0.0")
    expect(stat(page, "totals.processed")).to_have_text("5")
    expect(page.locator('[data-series-total="processed"]')).to_have_text("5")
    expect(stat(page, "workers")).to_have_text("1")
    expect(stat(page, "latency_ms.p50")).to_have_text(re.compile(r"^[\d,.]+ (ms|s)$"))
    expect(stat(page, "queue_depth")).to_have_text("0")
    expect(page.locator("#throughput-chart canvas")).to_be_visible()
    shot(page, "overview")


def chart_seconds(page: Page) -> tuple[int, int]:
    """The first and last second the throughput chart plots."""
    chart = page.locator("#throughput-chart")
    return int(chart.get_attribute("data-first-second")), int(
        chart.get_attribute("data-last-second")
    )


def test_chart_moves_a_second_at_a_time_and_keeps_five_minutes(live_server, worker, admin, page):
    log_in(page, live_server, admin.email)
    expect(page.locator("#live-status")).to_have_text("Live")
    expect(page.locator("#throughput-chart canvas")).to_be_visible()
    first, last = chart_seconds(page)
    assert last - first == CHART_SECONDS - 1

    headers = api_headers(live_server, admin.email)
    for n in range(3):
        ingest(live_server, headers, "TEST_OK", {"n": n})
    # The chart takes in the new seconds as they end, from the live feed alone...
    expect(page.locator('[data-series-total="ingested"]')).to_have_text("3")
    expect(page.locator("#throughput-chart")).not_to_have_attribute(
        "data-last-second", str(last), timeout=LIVE_UPDATE_MS
    )
    page.wait_for_function(
        "last => Number(document.getElementById('throughput-chart').dataset.lastSecond) >= last",
        arg=last + 3,
    )
    # ... and drops as many old ones: still the last five minutes, one point a second.
    moved_first, moved_last = chart_seconds(page)
    assert moved_last - moved_first == CHART_SECONDS - 1
    assert moved_first > first
    expect(page.locator('[data-series-total="ingested"]')).to_have_text("3")
    expect(page.locator('[data-series-total="processed"]')).to_have_text("3")

    page.reload()  # the page's own history and the live feed's agree
    expect(page.locator("#live-status")).to_have_text("Live")
    expect(page.locator('[data-series-total="ingested"]')).to_have_text("3")
    assert chart_seconds(page)[1] >= moved_last


def test_failure_appears_in_the_dlq_live_and_replay_makes_it_processed(
    live_server, worker, admin, tmp_path, page
):
    flag = tmp_path / "toggle-on"
    flag.write_text("the TEST_TOGGLE handler fails while this file exists")
    log_in(page, live_server, admin.email)
    page.locator(".nav").get_by_role("link", name="DLQ").click()
    expect(page.get_by_role("heading", name="The DLQ is empty")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Live")

    headers = api_headers(live_server, admin.email)
    permanent = ingest(live_server, headers, "TEST_PERMANENT", {"why": "bad data"})
    toggle = ingest(live_server, headers, "TEST_TOGGLE", {"fail_while": str(flag)})

    # Both arrive without a reload: the list follows the live feed.
    permanent_row = page.locator(f'tr[data-event-id="{permanent}"]')
    toggle_row = page.locator(f'tr[data-event-id="{toggle}"]')
    expect(permanent_row).to_contain_text("PermanentError: cannot ever succeed")
    expect(toggle_row).to_contain_text("RuntimeError: toggle is on")
    expect(page.locator('.nav [data-stat="dlq_size"]')).to_have_text("2")
    shot(page, "dlq")

    flag.unlink()
    toggle_row.get_by_role("button", name="Replay").click()
    expect(page.locator("#outcome")).to_contain_text(f"Event {toggle} is back in the queue.")
    expect(toggle_row).to_have_count(0)
    expect(permanent_row).to_be_visible()

    page.locator("#outcome").get_by_role("link", name="Open the event").click()
    expect(page.locator("#event-detail")).to_have_attribute("data-status", "PROCESSED")
    expect(page.locator("#event-detail .detail-head .status")).to_have_text("Processed")
    expect(page.get_by_text("Replayed from the DLQ")).to_be_visible()
    expect(page.locator(".attempt-succeeded")).to_have_count(1)
    expect(page.locator(".attempt-failed")).to_have_count(1)
    expect(page.locator('[data-block="result"]')).to_contain_text('"ok": true')
    page.locator(".attempt-failed summary").click()
    expect(page.locator(".attempt-failed .traceback")).to_contain_text("Traceback")
    shot(page, "event-detail")

    # The replay is in the audit log, once, with who did it.
    page.locator(".nav").get_by_role("link", name="Audit").click()
    replays = page.locator('tr[data-action="replay"]')
    expect(replays).to_have_count(1)
    expect(replays).to_contain_text(admin.email)
    expect(replays).to_contain_text(toggle)
    page.get_by_label("Action").select_option("replay")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"action=replay"))
    expect(page.locator("tbody tr")).to_have_count(1)
    shot(page, "audit")


def test_replay_all_asks_for_confirmation_and_reports_the_count(app, live_server, admin, page):
    with app.app_context():
        for event_type in ["ORDER_CREATED", "ORDER_CREATED", "PAGE_VIEW"]:
            db.session.add(
                Event(user_id=admin.id, type=event_type, payload={}, status=Status.FAILED.value)
            )
        db.session.commit()
    log_in(page, live_server, admin.email)
    page.goto(f"{live_server}/dashboard/dlq")
    replay_all = page.locator('[data-action="replay-all"]')
    expect(replay_all).to_have_text("Replay all 3 events")

    page.once("dialog", lambda dialog: dialog.dismiss())
    replay_all.click()
    expect(page.locator("#dlq-list tbody tr")).to_have_count(3)

    page.get_by_label("Type").select_option("ORDER_CREATED")
    expect(page).to_have_url(re.compile(r"/dashboard/dlq\?type=ORDER_CREATED$"))
    expect(replay_all).to_have_text("Replay all 2 events of type ORDER_CREATED")
    messages: list[str] = []

    def accept(dialog):
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    replay_all.click()
    expect(page.locator("#outcome")).to_contain_text("Replayed 2 events of type ORDER_CREATED")
    assert messages and messages[0].startswith("Replay 2 events of type ORDER_CREATED?")
    expect(page.get_by_role("heading", name="No ORDER_CREATED events in the DLQ")).to_be_visible()
    page.get_by_role("link", name="Show every type").click()
    expect(page.locator("#dlq-list tbody tr")).to_have_count(1)


def test_events_filters_paginate_and_the_url_shares_the_view(app, live_server, admin, page):
    with app.app_context():
        for n in range(30):
            db.session.add(
                Event(user_id=admin.id, type="PAGE_VIEW", payload={"n": n}, status="PROCESSED")
            )
        failed = [
            Event(user_id=admin.id, type="ORDER_CREATED", payload={}, status="FAILED")
            for _ in range(3)
        ]
        db.session.add_all(failed)
        db.session.commit()
        wanted = str(failed[0].id)

    log_in(page, live_server, admin.email)
    page.locator(".nav").get_by_role("link", name="Events", exact=True).click()
    rows = page.locator("#events-results tbody tr")
    expect(page.locator(".results-summary")).to_contain_text("of 33 events")
    expect(rows).to_have_count(25)

    page.get_by_role("link", name="Older ›").first.click()
    expect(page).to_have_url(re.compile(r"/dashboard/events\?page=2$"))
    expect(rows).to_have_count(8)

    page.get_by_label("Status").select_option("FAILED")
    page.get_by_label("Type").fill("ORDER_CREATED")
    expect(page).to_have_url(re.compile(r"\?status=FAILED&type=ORDER_CREATED$"))
    expect(rows).to_have_count(3)
    shot(page, "events")

    shared = page.context.new_page()  # the same admin opening a link someone sent
    shared.goto(page.url)
    expect(shared.locator("#events-results tbody tr")).to_have_count(3)
    expect(shared.get_by_label("Status")).to_have_value("FAILED")
    expect(shared.get_by_label("Type")).to_have_value("ORDER_CREATED")
    shared.close()

    page.get_by_label("Id or prefix").fill(wanted)
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(f"q={wanted}"))
    rows.first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(f"/dashboard/events/{wanted}$"))
    page.go_back()
    expect(page).to_have_url(re.compile(f"q={wanted}"))
    expect(rows).to_have_count(1)


def test_non_admin_is_refused(live_server, make_user, page):
    user = make_user()
    log_in(page, live_server, user.email)
    expect(page.get_by_role("alert")).to_contain_text("admins and viewers only")
    shot(page, "login-refused")
    for path in ["/dashboard/", "/dashboard/events", "/dashboard/dlq"]:
        page.goto(f"{live_server}{path}")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
        expect(page.locator("table")).to_have_count(0)


def test_live_updates_resume_after_the_server_restarts(serve, admin, page):
    port = free_port()
    url = serve.start(port)
    log_in(page, url, admin.email)
    expect(page.locator("#live-status")).to_have_text("Live")

    serve.crash()
    expect(page.locator("#live-status")).to_have_text("Reconnecting…")
    serve.start(port)
    expect(page.locator("#live-status")).to_have_text("Live", timeout=20_000)

    ingest(url, api_headers(url, admin.email), "TEST_OK")
    expect(stat(page, "totals.ingested")).to_have_text("1")


def test_a_group_shows_with_its_day_and_traceback_and_replay_empties_it(
    app, live_server, worker, admin, tmp_path, page, browser
):
    flag = tmp_path / "toggle-on"
    flag.write_text("TEST_TOGGLE fails while this file exists")
    headers = api_headers(live_server, admin.email)
    toggles = [ingest(live_server, headers, "TEST_TOGGLE", {"fail_while": str(flag)}) for _ in "ab"]
    permanent = ingest(live_server, headers, "TEST_PERMANENT")
    wait_terminal(app, [*toggles, permanent])

    log_in(page, live_server, admin.email)
    page.locator(".nav").get_by_role("link", name="Errors").click()
    expect(page).to_have_url(re.compile(r"/dashboard/errors$"))
    cards = page.locator(".group")
    expect(cards).to_have_count(2)
    toggle = cards.filter(has_text="toggle is on")
    expect(toggle.locator("h2")).to_have_text("RuntimeError")
    expect(toggle.locator('[data-field="failed"]')).to_have_text("2")
    expect(toggle.locator('[data-field="count"]')).to_have_text("10")  # 2 events x 5 attempts
    expect(toggle.locator(".sparkline rect")).to_have_count(24)
    expect(toggle.locator(".sparkline rect.spark-hit")).to_have_count(1)  # this hour
    expect(toggle.locator('[data-field="recent"]')).to_have_text("10")
    expect(toggle.get_by_text("tests.handlers:toggle")).to_be_visible()
    group_id = toggle.get_attribute("data-group-id")
    expect(toggle.get_by_role("link", name="Show its events")).to_have_attribute(
        "href", f"/dashboard/events?error_group={group_id}"
    )
    traceback = toggle.locator(".traceback")
    expect(traceback).to_be_hidden()  # collapsed until asked for
    toggle.get_by_text("Sample traceback").click()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    shot(page, "errors")

    flag.unlink()
    asked: list[str] = []

    def accept(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    toggle.locator('[data-action="replay-group"]').click()
    expect(page.locator("#outcome")).to_contain_text(f"Replayed 2 events of error group {group_id}")
    assert asked and asked[0].startswith("Replay the 2 events of this group in the DLQ?")
    expect(toggle.locator('[data-field="failed"]')).to_have_text("0")
    expect(toggle.locator('[data-action="replay-group"]')).to_have_count(0)
    wait_terminal(app, toggles)
    assert statuses(app, [*toggles, permanent]) == {
        toggles[0]: "PROCESSED",
        toggles[1]: "PROCESSED",
        permanent: "FAILED",
    }

    toggle.locator('[data-action="resolved"]').click()
    expect(toggle.locator('[data-field="status"]')).to_have_text("Resolved")
    page.get_by_label("Status").select_option("resolved")
    expect(page).to_have_url(re.compile(r"/dashboard/errors\?status=resolved$"))
    expect(cards).to_have_count(1)

    with app.app_context():
        users.create_user("viewer@example.com", PASSWORD, role="viewer")
    viewer = browser.new_context(viewport={"width": 1366, "height": 860}).new_page()
    log_in(viewer, live_server, "viewer@example.com")
    viewer.goto(f"{live_server}/dashboard/errors")
    expect(viewer.locator(".group")).to_have_count(2)
    expect(viewer.locator(".group [data-action]")).to_have_count(0)
    expect(
        viewer.locator(".group").first.get_by_role("link", name="Show its events")
    ).to_be_visible()
    shot(viewer, "errors-viewer")
    viewer.context.close()


def test_history_chart_shows_each_range_its_buttons_pick(live_server, app, admin, page):
    """The Overview's History chart: each range button redraws it from the database."""
    history = app.extensions[HISTORY_KEY]
    history.count("ingested", ["ORDER_CREATED"] * 3)
    history.processed([("ORDER_CREATED", 8.0)] * 3)
    history.count("ingested", ["page.view"] * 4, at=time.time() - 3 * 3600)
    history.flush()

    log_in(page, live_server, admin.email)
    chart = page.locator("#history-chart")
    expect(chart.locator("canvas")).to_be_visible()
    expect(chart).to_have_attribute("data-points", "60")
    expect(page.locator("#history-summary")).to_contain_text("3 ingested · 3 processed")

    page.get_by_role("link", name="24 hours").click()
    expect(page).to_have_url(re.compile(r"history=24h"))
    expect(page.get_by_role("link", name="24 hours")).to_have_attribute("aria-current", "true")
    expect(chart).to_have_attribute("data-points", "288")
    expect(page.locator("#history-summary")).to_contain_text("7 ingested · 3 processed")
    shot(page, "history")

    page.get_by_role("link", name="30 days").click()
    expect(chart).to_have_attribute("data-points", "120")
