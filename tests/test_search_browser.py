"""Search on the Events page in headless Chromium against gunicorn, PostgreSQL and Redis."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playwright.sync_api import expect

from eventflow.extensions import db
from eventflow.models import Event

from .test_dashboard_browser import (  # noqa: F401  (the Chromium and server fixtures)
    admin,
    browser,
    live_server,
    log_in,
    page,
    shared_server,
    shot,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_search_fields_drive_the_results_and_the_url_and_a_reload_keeps_them(
    app,
    live_server,  # noqa: F811
    admin,  # noqa: F811
    page,  # noqa: F811
):
    with app.app_context():
        rows = [
            Event(
                user_id=admin.id,
                type="ORDER_CREATED",
                payload={"customer": {"id": n % 3 if n % 3 else "0"}, "vip": n % 2 == 0},
                status="PROCESSED",
                created_at=START + timedelta(hours=n),
                error_group_id=7 if n in (4, 10) else None,
            )
            for n in range(12)
        ]
        db.session.add_all(rows)
        db.session.commit()
        # customer.id is the number 1 for n = 1, 4, 7, 10; of them vip for 4 and 10.
        ones = {str(rows[n].id) for n in (1, 4, 7, 10)}
        wanted = str(rows[4].id)

    log_in(page, live_server, admin.email)
    page.goto(f"{live_server}/dashboard/events")
    results = page.locator("#events-results tbody tr")
    expect(results).to_have_count(12)

    def shown() -> set[str]:
        return set(results.evaluate_all("rows => rows.map(row => row.dataset.eventId)"))

    page.get_by_label("Payload").fill("customer.id=1")
    expect(page).to_have_url(re.compile(r"/dashboard/events\?payload\.customer\.id=1$"))
    expect(results).to_have_count(4)
    assert shown() == ones

    page.get_by_label("Payload").fill("customer.id=1\nvip=true")
    expect(page).to_have_url(re.compile(r"payload\.customer\.id=1&payload\.vip=true$"))
    expect(results).to_have_count(2)

    # From is inclusive, To exclusive: n = 4 (16:00) is in, n = 10 (22:00) is not.
    page.get_by_label("From (UTC)").fill("2026-03-01T16:00:00")
    page.get_by_label("To (UTC)").fill("2026-03-01T22:00:00")
    expect(page).to_have_url(
        re.compile(r"\?created_after=2026-03-01T16:00&created_before=2026-03-01T22:00&payload")
    )
    expect(results).to_have_count(1)
    assert shown() == {wanted}
    shot(page, "events-search")

    page.reload()  # the URL alone rebuilds the view, fields and results
    expect(results).to_have_count(1)
    expect(page.get_by_label("Payload")).to_have_value("customer.id=1\nvip=true")
    # (Chromium leaves out seconds that are zero.)
    expect(page.get_by_label("From (UTC)")).to_have_value(re.compile(r"^2026-03-01T16:00(:00)?$"))
    expect(page.get_by_label("To (UTC)")).to_have_value(re.compile(r"^2026-03-01T22:00(:00)?$"))

    page.get_by_label("To (UTC)").fill("")
    page.get_by_label("Payload").fill("")
    expect(results).to_have_count(8)  # n = 4 to 11
    page.get_by_label("Id or prefix").fill(wanted[:8])
    expect(page).to_have_url(re.compile(f"q={wanted[:8]}"))
    expect(results).to_have_count(1)
    page.get_by_label("Id or prefix").fill(wanted[:5])
    expect(page.get_by_role("alert")).to_contain_text("at least its first 8 hex digits")
    page.get_by_label("Payload").fill("customer.id")
    expect(page.get_by_role("alert")).to_contain_text("Id or prefix")
    page.get_by_label("Id or prefix").fill("")
    expect(page.get_by_role("alert")).to_contain_text("has no =")

    # An error group arrives by link (the Errors page) and shows as a chip until removed.
    page.goto(f"{live_server}/dashboard/events?error_group=7&created_after=2026-03-01")
    chip = page.locator('.chip[data-filter="error_group"]')
    expect(chip).to_contain_text("Error group 7")
    expect(results).to_have_count(2)
    page.get_by_label("Payload").fill("vip=true")  # the chip holds while other fields change
    expect(page).to_have_url(re.compile(r"error_group=7.*payload\.vip=true"))
    expect(results).to_have_count(2)
    chip.get_by_role("link", name="Remove the error group filter").click()
    expect(chip).to_have_count(0)
    expect(page).to_have_url(
        re.compile(r"/dashboard/events\?created_after=2026-03-01T00:00(:00)?&payload\.vip=true$")
    )
    expect(results).to_have_count(6)  # every vip: n even
