"""Bulk actions in the dashboard: the count, a confirmation, then live progress (CONTRACT §10).

In headless Chromium against gunicorn and a real worker (the fixtures and checks of
test_dashboard_browser.py: every tab fails on a JavaScript error or a CSP violation).
"""

from __future__ import annotations

import html
import re

from playwright.sync_api import expect
from sqlalchemy import text

from eventflow.extensions import db
from tests.test_bulk_actions import add_failed, counts
from tests.test_dashboard_browser import (  # noqa: F401  (fixtures)
    admin,
    browser,
    live_server,
    log_in,
    page,
    shared_server,
    shot,
)
from tests.test_dashboard_views import log_in as client_log_in


def test_replay_matching_counts_first_then_confirms_and_shows_progress_to_completion(
    app,
    live_server,  # noqa: F811  (the fixtures imported above)
    worker,
    admin,  # noqa: F811
    page,  # noqa: F811
):
    add_failed(app, admin.id, 40, "BULK_UI")
    add_failed(app, admin.id, 5, "OTHER")
    log_in(page, live_server, admin.email)
    page.goto(f"{live_server}/dashboard/dlq?type=BULK_UI")

    page.get_by_role("button", name="Replay matching…").click()
    confirm = page.locator("#bulk-confirm")
    expect(confirm.locator('[data-bulk="matched"]')).to_have_text("40")
    shot(page, "bulk-confirm")
    assert counts(app) == {"FAILED": 45}  # counting changed nothing

    confirm.get_by_role("button", name="Replay 40 events").click()
    expect(page).to_have_url(re.compile(r"/dashboard/bulk/[0-9a-f-]{36}$"))
    progress = page.locator("#bulk-progress")
    expect(progress.locator('[data-bulk="status"]')).to_have_text("Completed")
    expect(progress.locator('[data-bulk="done"]')).to_have_text("40")
    expect(progress.locator("progress")).to_have_attribute("value", "40")
    expect(progress).to_contain_text("type=BULK_UI")
    expect(progress).to_contain_text(admin.email)
    expect(progress.get_by_role("button", name="Cancel")).to_have_count(0)
    shot(page, "bulk-progress")
    assert counts(app, type="OTHER") == {"FAILED": 5}


def test_a_viewer_sees_bulk_progress_and_events_but_no_bulk_or_edit_buttons(
    app,
    client,
    admin,  # noqa: F811  (test_dashboard_browser's fixture)
    make_user,
):
    add_failed(app, admin.id, 3, "VIEWED")
    viewer = make_user()
    with app.app_context():
        db.session.execute(
            text("UPDATE users SET role = 'viewer' WHERE id = :id"), {"id": viewer.id}
        )
        db.session.commit()
        event_id = db.session.scalar(text("SELECT id FROM events LIMIT 1"))
    assert client_log_in(client, viewer.email).status_code == 302
    for path in ("/dashboard/dlq", "/dashboard/events", f"/dashboard/events/{event_id}"):
        page_html = client.get(path).get_data(as_text=True)
        assert "Replay matching" not in page_html and "Discard matching" not in page_html
        assert 'data-block="edit-payload"' not in page_html
    # And the server refuses the actions themselves (the CSRF token is the viewer's own).
    token = re.search(r'"X-CSRFToken": "([^"]+)"', client.get("/dashboard/dlq").get_data(True))[1]
    for path, data in [
        ("/dashboard/bulk", {"action": "discard"}),
        (f"/dashboard/events/{event_id}/edit", {"payload": "{}"}),
    ]:
        response = client.post(path, data=data, headers={"X-CSRFToken": token})
        assert response.status_code == 403
    assert counts(app) == {"FAILED": 3}


def test_the_events_views_filters_carry_into_the_count_and_the_action(
    app,
    client,
    admin,  # noqa: F811  (test_dashboard_browser's fixture)
):
    add_failed(app, admin.id, 4, "CARRIED", region="eu")
    add_failed(app, admin.id, 2, "CARRIED", region="us")
    add_failed(app, admin.id, 3, "ELSEWHERE", region="eu")
    assert client_log_in(client, admin.email).status_code == 302
    page_html = client.get("/dashboard/events?status=FAILED&type=CARRIED").get_data(True)
    assert "Replay matching" in page_html and "Discard matching" in page_html
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page_html)[1]
    htmx = {"HX-Request": "true", "X-CSRFToken": token}

    args = "action=discard&status=FAILED&type=CARRIED&limit=25&payload.region=eu"
    confirm = client.get(f"/dashboard/bulk/new?{args}", headers=htmx).get_data(True)
    assert 'data-bulk="matched">4<' in confirm and "Discard 4 events" in confirm
    refused = client.get("/dashboard/bulk/new?action=replay&status=PROCESSED", headers=htmx)
    assert refused.status_code == 400 and "FAILED events only" in refused.get_data(True)

    # The confirmation posts the filter it counted, as its hidden fields.
    hidden = re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', confirm)
    fields = {name: html.unescape(value) for name, value in hidden}
    fields.pop("csrf_token")
    created = client.post("/dashboard/bulk", data=fields, headers=htmx)
    assert created.status_code == 204 and "/dashboard/bulk/" in created.headers["HX-Redirect"]
    progress = client.get(created.headers["HX-Redirect"]).get_data(True)
    assert 'data-bulk="matched">4<' in progress
    assert 'payload={"region": "eu"}' in html.unescape(progress)
