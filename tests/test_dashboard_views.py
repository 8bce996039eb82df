"""The dashboard's pages through the Flask test client: access, CSRF, filters, replay."""

from __future__ import annotations

import re
import uuid
from html import unescape

import pytest
import redis as redis_lib

from eventflow.extensions import db
from eventflow.models import Event, EventAttempt, Outcome, Status, utcnow

PASSWORD = "correct-horse"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client, path: str = "/dashboard/login") -> str:
    """The CSRF token from a form on the given page."""
    return CSRF_INPUT.search(client.get(path).get_data(as_text=True)).group(1)


def log_in(client, email: str, password: str = PASSWORD, next_url: str = ""):
    return client.post(
        "/dashboard/login",
        data={
            "email": email,
            "password": password,
            "csrf_token": csrf_token(client),
            "next": next_url,
        },
    )


@pytest.fixture
def admin(make_user):
    return make_user(admin=True)


@pytest.fixture
def admin_client(client, admin):
    assert log_in(client, admin.email).status_code == 302
    return client


@pytest.fixture
def add_event(app, admin):
    """Factory: add_event(type, status, **fields) -> id of an event stored directly."""

    def add(event_type="ORDER_CREATED", status=Status.PROCESSED, user_id=None, **fields):
        with app.app_context():
            event = Event(
                user_id=user_id or admin.id,
                type=event_type,
                payload=fields.pop("payload", {"n": 1}),
                status=status.value,
                **fields,
            )
            db.session.add(event)
            db.session.commit()
            return event.id

    return add


def htmx(token: str | None = None) -> dict[str, str]:
    headers = {"HX-Request": "true"}
    if token:
        headers["X-CSRFToken"] = token
    return headers


def page_token(client, path: str = "/dashboard/") -> str:
    """The CSRF token htmx sends (the page's hx-headers) for a logged-in admin."""
    return re.search(r'"X-CSRFToken": "([^"]+)"', client.get(path).get_data(as_text=True))[1]


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/",
        "/dashboard/events",
        "/dashboard/dlq",
        "/dashboard/events/5f0c2d7e-0000-4000-8000-000000000001",
    ],
)
def test_anonymous_visitor_is_redirected_to_login_and_sees_no_data(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/dashboard/login?next=")


def test_anonymous_htmx_request_gets_403_with_a_redirect_to_login(client):
    response = client.get("/dashboard/events", headers=htmx())
    assert response.status_code == 403
    assert response.headers["HX-Redirect"].startswith("/dashboard/login")
    assert "<table" not in response.get_data(as_text=True)


def test_admin_logs_in_lands_on_next_page_and_logs_out(client, admin):
    response = log_in(client, admin.email.upper(), next_url="/dashboard/dlq")
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard/dlq"
    page = client.get("/dashboard/dlq")
    assert page.status_code == 200
    assert admin.email in page.get_data(as_text=True)

    logout = client.post("/dashboard/logout", data={"csrf_token": page_token(client)})
    assert logout.status_code == 302
    assert client.get("/dashboard/").status_code == 302


def test_login_never_redirects_off_the_dashboard(app, admin):
    for target in ["https://evil.example/", "//evil.example/x", "/api/v1/events", "/\\evil"]:
        response = log_in(app.test_client(), admin.email, next_url=target)
        assert response.headers["Location"] == "/dashboard/", target


def test_wrong_password_and_unknown_email_get_the_same_refusal(client, admin):
    wrong = log_in(client, admin.email, password="not-the-password")
    unknown = log_in(client, "nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert "Invalid email or password." in wrong.get_data(as_text=True)
    assert "Invalid email or password." in unknown.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 302


def test_non_admin_cannot_log_in_or_see_any_page(client, make_user, add_event):
    user = make_user()
    add_event(user_id=user.id)
    response = log_in(client, user.email)
    assert response.status_code == 403
    assert "admins and viewers only" in response.get_data(as_text=True)
    for path in ["/dashboard/", "/dashboard/events", "/dashboard/dlq"]:
        assert client.get(path).status_code == 302, path
    assert client.get("/dashboard/events", headers=htmx()).status_code == 403


def test_admin_demoted_after_login_loses_access(app, admin_client, admin):
    from eventflow.models import User

    with app.app_context():
        db.session.get(User, admin.id).role = "user"
        db.session.commit()
    assert admin_client.get("/dashboard/events").status_code == 302


# --- CSRF ------------------------------------------------------------------------------------


def test_login_without_csrf_token_is_refused(client, admin):
    response = client.post("/dashboard/login", data={"email": admin.email, "password": PASSWORD})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 302


def test_replay_without_csrf_token_is_refused_and_changes_nothing(app, admin_client, add_event):
    event_id = add_event(status=Status.FAILED)
    plain = admin_client.post(f"/dashboard/events/{event_id}/replay")
    scripted = admin_client.post(f"/dashboard/events/{event_id}/replay", headers=htmx("forged"))
    everything = admin_client.post("/dashboard/dlq/replay", headers=htmx())
    assert plain.status_code == scripted.status_code == everything.status_code == 400
    assert "CSRF" in scripted.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Event, event_id).status == Status.FAILED.value


def test_logout_needs_the_csrf_token(admin_client):
    assert admin_client.post("/dashboard/logout").status_code == 400
    assert admin_client.get("/dashboard/").status_code == 200


# --- pages -----------------------------------------------------------------------------------


def test_overview_shows_the_live_tiles_with_formatted_numbers(admin_client):
    page = admin_client.get("/dashboard/").get_data(as_text=True)
    for stat in [
        "ingested_per_s",
        "processed_per_s",
        "failed_per_s",
        "retried_per_s",
        "queue_depth",
        "dlq_size",
        "latency_ms.p50",
        "latency_ms.p95",
        "latency_ms.p99",
        "workers",
    ]:
        assert f'data-stat="{stat}"' in page, stat
    assert 'id="throughput-chart"' in page
    assert "socket.io-4.8.4.min.js" in page and "htmx-2.0.11.min.js" in page


def test_overview_still_loads_when_the_queue_is_down(admin_client, monkeypatch):
    def unreachable(_stats):
        raise redis_lib.ConnectionError("Redis is down")

    monkeypatch.setattr("eventflow.dashboard.views.snapshot", unreachable)
    response = admin_client.get("/dashboard/")
    assert response.status_code == 200
    assert "Live counters are unavailable" in response.get_data(as_text=True)


def test_events_filter_by_status_type_and_user(admin_client, add_event, make_user):
    other = make_user(email="other@example.com")
    failed = add_event("ORDER_CREATED", Status.FAILED)
    add_event("ORDER_CREATED", Status.PROCESSED)
    add_event("PAGE_VIEW", Status.FAILED)
    theirs = add_event("PAGE_VIEW", Status.PENDING, user_id=other.id)

    page = admin_client.get("/dashboard/events?status=FAILED&type=ORDER_CREATED")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count("data-event-id=") == 1 and str(failed) in html

    by_user = admin_client.get("/dashboard/events?user=OTHER@example.com").get_data(as_text=True)
    assert by_user.count("data-event-id=") == 1 and str(theirs) in by_user

    everything = admin_client.get("/dashboard/events").get_data(as_text=True)
    assert everything.count("data-event-id=") == 4
    assert "of\n    <strong>4</strong> events" in everything


def test_events_search_by_id_finds_exactly_that_event(admin_client, add_event):
    wanted = add_event()
    add_event()
    html = admin_client.get(f"/dashboard/events?id={wanted}").get_data(as_text=True)
    assert html.count("data-event-id=") == 1 and str(wanted) in html

    bad = admin_client.get("/dashboard/events?id=not-a-uuid")
    assert bad.status_code == 400
    assert "full UUID" in bad.get_data(as_text=True)


def test_htmx_filter_returns_the_results_fragment_and_a_shareable_url(admin_client, add_event):
    for _ in range(3):
        add_event("PAGE_VIEW", Status.PROCESSED)
    response = admin_client.get(
        "/dashboard/events?status=PROCESSED&type=PAGE_VIEW&user=&id=&limit=25", headers=htmx()
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="events-results"')
    assert "<html" not in html
    assert response.headers["HX-Push-Url"] == "/dashboard/events?status=PROCESSED&type=PAGE_VIEW"
    assert "HX-Request" in response.headers["Vary"]
    assert response.headers["Cache-Control"] == "no-store"


def test_events_paginate_newest_first_with_page_links_that_keep_filters(admin_client, add_event):
    ids = [add_event("PAGE_VIEW", Status.PROCESSED) for _ in range(30)]
    first = admin_client.get("/dashboard/events?type=PAGE_VIEW").get_data(as_text=True)
    assert first.count("data-event-id=") == 25
    assert "Page 1 of 2" in first
    assert 'href="/dashboard/events?type=PAGE_VIEW&amp;page=2"' in first

    second = admin_client.get("/dashboard/events?type=PAGE_VIEW&page=2", headers=htmx())
    html = second.get_data(as_text=True)
    assert html.count("data-event-id=") == 5
    assert second.headers["HX-Push-Url"] == "/dashboard/events?type=PAGE_VIEW&page=2"
    assert str(ids[0]) in html  # the oldest is on the last page


def test_invalid_filter_says_what_is_wrong(admin_client):
    response = admin_client.get("/dashboard/events?status=LOST", headers=htmx())
    assert response.status_code == 400
    assert "status must be one of" in response.get_data(as_text=True)


def test_empty_states_explain_what_would_appear(admin_client):
    assert "No events yet" in admin_client.get("/dashboard/events").get_data(as_text=True)
    assert "The DLQ is empty" in admin_client.get("/dashboard/dlq").get_data(as_text=True)
    filtered = admin_client.get("/dashboard/events?type=NOPE").get_data(as_text=True)
    assert "No events match these filters" in filtered


def test_event_detail_shows_payload_result_and_attempt_timeline(app, admin_client, add_event):
    event_id = add_event(
        "ORDER_CREATED",
        Status.FAILED,
        payload={"items": [{"price": 5, "qty": 2}], "note": "<b>hi</b>"},
        attempts=2,
        last_error="ValueError: boom",
    )
    with app.app_context():
        now = utcnow()
        for number, outcome in [(1, Outcome.RETRY), (2, Outcome.FAILED)]:
            db.session.add(
                EventAttempt(
                    event_id=event_id,
                    number=number,
                    worker="host:1",
                    started_at=now,
                    finished_at=now,
                    outcome=outcome.value,
                    error="ValueError: boom",
                    traceback='Traceback (most recent call last):\n  File "x.py"\nValueError: boom',
                )
            )
        db.session.commit()
    html = admin_client.get(f"/dashboard/events/{event_id}").get_data(as_text=True)
    assert '\n      "price": 5' in unescape(html)  # pretty-printed: indented, one key a line
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html  # escaped, not markup
    assert "Attempt 1" in html and "Attempt 2" in html
    assert "Failed, retried" in html and "Failed, sent to the DLQ" in html
    assert "Traceback (most recent call last)" in html
    assert ">Replay</button>" in html


def test_unknown_event_is_a_404_page(admin_client):
    response = admin_client.get(f"/dashboard/events/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "Not found" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HX-Request": "true"},
        {"HX-Request": "true", "HX-History-Restore-Request": "true"},
        {"X-Requested-With": "XMLHttpRequest"},
    ],
    ids=["page", "htmx", "htmx-history-restore", "script"],
)
def test_unknown_event_id_in_the_url_is_never_sent_back_as_markup(admin_client, headers):
    tag = "<img src=x onerror=alert(1)>"
    response = admin_client.get(f"/dashboard/events/{tag}", headers=headers)
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    if response.mimetype == "text/html":
        assert tag not in body  # shown as text: escaped
        assert "&lt;img src=x onerror=alert(1)&gt;" in body
    else:  # a status for scripts: plain text, which no browser renders as a page
        assert response.mimetype == "text/plain"
        assert f"no event with id '{tag}'" in body


# --- replay ----------------------------------------------------------------------------------


def test_replay_one_from_the_dlq_requeues_it_and_says_so(app, admin_client, add_event):
    event_id = add_event(status=Status.FAILED, attempts=3)
    token = page_token(admin_client, "/dashboard/dlq")
    response = admin_client.post(f"/dashboard/events/{event_id}/replay", headers=htmx(token))
    assert response.status_code == 200
    assert "back in the queue" in response.get_data(as_text=True)
    assert "dlq-changed" in response.headers["HX-Trigger"]
    with app.app_context():
        assert db.session.get(Event, event_id).status == Status.PENDING.value
    assert str(event_id) not in admin_client.get("/dashboard/dlq").get_data(as_text=True)

    again = admin_client.post(f"/dashboard/events/{event_id}/replay", headers=htmx(token))
    assert again.status_code == 409
    assert "only FAILED events can be replayed" in again.get_data(as_text=True)


def test_replay_by_form_post_without_htmx_flashes_and_redirects(app, admin_client, add_event):
    event_id = add_event(status=Status.FAILED)
    token = page_token(admin_client, "/dashboard/dlq")
    response = admin_client.post(
        f"/dashboard/events/{event_id}/replay",
        data={"csrf_token": token, "next": f"/dashboard/events/{event_id}"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/dashboard/events/{event_id}"
    assert "back in the queue" in admin_client.get(response.headers["Location"]).get_data(
        as_text=True
    )


def test_replay_by_type_replays_only_that_type(app, admin_client, add_event):
    orders = [add_event("ORDER_CREATED", Status.FAILED) for _ in range(2)]
    view = add_event("PAGE_VIEW", Status.FAILED)
    dlq = admin_client.get("/dashboard/dlq?type=ORDER_CREATED").get_data(as_text=True)
    assert 'hx-confirm="Replay 2 events of type ORDER_CREATED?' in dlq
    assert "ORDER_CREATED (2)" in dlq and "PAGE_VIEW (1)" in dlq

    token = page_token(admin_client, "/dashboard/dlq")
    response = admin_client.post(
        "/dashboard/dlq/replay", data={"type": "ORDER_CREATED"}, headers=htmx(token)
    )
    assert "Replayed 2 events of type ORDER_CREATED" in response.get_data(as_text=True)
    with app.app_context():
        statuses = {i: db.session.get(Event, i).status for i in [*orders, view]}
    assert statuses == {orders[0]: "PENDING", orders[1]: "PENDING", view: "FAILED"}


def test_replay_all_empties_the_dlq_and_then_has_nothing_to_do(admin_client, add_event):
    for event_type in ["A", "B", "C"]:
        add_event(event_type, Status.FAILED)
    token = page_token(admin_client, "/dashboard/dlq")
    first = admin_client.post("/dashboard/dlq/replay", headers=htmx(token))
    assert "Replayed 3 events" in first.get_data(as_text=True)
    second = admin_client.post("/dashboard/dlq/replay", headers=htmx(token))
    assert "Nothing to replay" in second.get_data(as_text=True)
    assert "The DLQ is empty" in admin_client.get("/dashboard/dlq").get_data(as_text=True)
