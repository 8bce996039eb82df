"""Event types (CONTRACT §11): GET /types, pause and resume by API, CLI and dashboard, the
per-type retry policy, and recovery's treatment of paused types. In-process, no worker:
tests/test_pause.py runs the same with real worker processes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from eventflow.extensions import db
from eventflow.models import AuditEntry, Event, EventAttempt, utcnow
from eventflow.tasks import handler
from eventflow.tasks.queue import get_queue, processor_of
from eventflow.tasks.recovery import recover
from eventflow.tasks.registry import RetryPolicy
from tests.conftest import bearer
from tests.pipeline import events_by_id, ingest
from tests.test_dashboard_views import csrf_token, log_in


def types_of(client, headers) -> dict[str, dict]:
    response = client.get("/api/v1/types", headers=headers)
    assert response.status_code == 200, response.get_json()
    return {item["type"]: item for item in response.get_json()}


def audit_rows(app) -> list[tuple[str, str | None, str]]:
    """(action, target, actor) of the pause/resume entries, oldest first."""
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action.in_(("pause", "resume")))
            .order_by(AuditEntry.id)
        ).all()
        return [(e.action, e.target, e.actor) for e in entries]


def attempt_count(app, event_id: str) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count())
            .select_from(EventAttempt)
            .where(EventAttempt.event_id == uuid.UUID(event_id))
        )


def _process(app, event_id: str) -> None:
    """Run the worker's task body in this process, as a queue message would."""
    with app.app_context():
        processor_of(app).process(event_id)


@pytest.fixture
def viewer(client, make_user):
    return bearer(client, make_user(role="viewer").email)


def test_types_lists_handlers_with_their_policy_types_with_events_and_paused_types(
    client, app, admin_auth, viewer
):
    ingest(client, admin_auth, "no.handler", {})
    assert client.post("/api/v1/types/never.seen/pause", headers=admin_auth).status_code == 200

    types = types_of(client, viewer)
    assert {"TEST_OK", "TEST_TWO_ATTEMPTS", "ORDER_CREATED", "no.handler", "never.seen"} <= set(
        types
    )
    assert list(types) == sorted(types)
    assert types["TEST_TWO_ATTEMPTS"]["policy"] == {
        "max_attempts": 2,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
    }
    # The tests' global settings (conftest FAST_PIPELINE; 5 attempts by default).
    assert types["TEST_OK"]["policy"] == {
        "max_attempts": 5,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
    }
    assert types["no.handler"]["counts"] == {
        "pending": 1,
        "processing": 0,
        "retrying": 0,
        "failed": 0,
        "processed": 0,
    }
    assert types["no.handler"]["paused"] is False and types["no.handler"]["paused_by"] is None
    assert types["never.seen"]["paused"] is True
    assert types["never.seen"]["paused_at"].endswith("Z")
    # What the workers and recovery use is what GET /types shows.
    with app.app_context():
        settings = app.config["EVENTFLOW"]
        handlers = processor_of(app).handlers
        assert handlers.policy("TEST_OK", settings) == RetryPolicy.of(settings)
        assert handlers.policy("no.handler", settings) == RetryPolicy.of(settings)
        assert handlers.policy("TEST_TWO_ATTEMPTS", settings) == RetryPolicy(2, 0.01, 0.05)


def test_pause_and_resume_are_audited_once_each_and_show_who_paused(client, app, make_user):
    admin = make_user(admin=True)
    headers = bearer(client, admin.email)
    before = utcnow()
    first = client.post("/api/v1/types/TEST_OK/pause", headers=headers)
    again = client.post("/api/v1/types/TEST_OK/pause", headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.get_json() == again.get_json()  # pausing a paused type changes nothing
    state = first.get_json()
    assert state["paused"] is True and state["paused_by"] == admin.email
    assert types_of(client, headers)["TEST_OK"]["paused_at"] == state["paused_at"]
    paused_at = datetime.fromisoformat(state["paused_at"].replace("Z", "+00:00"))
    assert before <= paused_at <= utcnow()

    resumed = client.post("/api/v1/types/TEST_OK/resume", headers=headers)
    assert client.post("/api/v1/types/TEST_OK/resume", headers=headers).status_code == 200
    assert resumed.status_code == 200
    assert resumed.get_json()["paused"] is False and resumed.get_json()["paused_by"] is None
    assert audit_rows(app) == [
        ("pause", "TEST_OK", admin.email),
        ("resume", "TEST_OK", admin.email),
    ]


def test_a_viewer_sees_types_but_gets_403_on_pause_and_resume_and_a_user_on_all(
    client, app, admin_auth, viewer, auth
):
    client.post("/api/v1/types/TEST_TOGGLE/pause", headers=admin_auth)
    for path in ("/api/v1/types/TEST_OK/pause", "/api/v1/types/TEST_TOGGLE/resume"):
        response = client.post(path, headers=viewer)
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "forbidden"
    types = types_of(client, viewer)
    assert types["TEST_OK"]["paused"] is False and types["TEST_TOGGLE"]["paused"] is True
    assert len(audit_rows(app)) == 1
    assert client.get("/api/v1/types", headers=auth).status_code == 403
    assert client.post("/api/v1/types/TEST_OK/pause", headers=auth).status_code == 403


def test_bad_type_names_are_400_and_change_nothing(client, app, admin_auth):
    for name in ("bad name", "a" * 65, "semi;colon", "caf%C3%A9"):
        for action in ("pause", "resume"):
            response = client.post(f"/api/v1/types/{name}/{action}", headers=admin_auth)
            assert response.status_code == 400, response.get_data(as_text=True)
            assert response.get_json()["error"]["code"] == "invalid_type"
    assert not any(t["paused"] for t in types_of(client, admin_auth).values())
    assert audit_rows(app) == []


def test_the_cli_pauses_lists_and_resumes_a_type_as_the_command_line(runner, app):
    paused = runner.invoke(args=["types", "pause", "TEST_OK"])
    assert paused.exit_code == 0, paused.output
    assert "paused by command line" in paused.output
    listed = runner.invoke(args=["types", "list"])
    assert [line for line in listed.output.splitlines() if line.startswith("TEST_OK ")][0].count(
        "paused by command line"
    )
    resumed = runner.invoke(args=["types", "resume", "TEST_OK"])
    assert resumed.exit_code == 0, resumed.output
    assert "running" in resumed.output and "0 waiting event(s) sent" in resumed.output
    bad = runner.invoke(args=["types", "pause", "no spaces"])
    assert bad.exit_code != 0 and "must be 1-64 characters" in bad.output
    assert audit_rows(app) == [
        ("pause", "TEST_OK", "command line"),
        ("resume", "TEST_OK", "command line"),
    ]


def test_a_paused_types_message_is_dropped_without_a_claim_and_resume_sends_it_again(
    client, app, auth, admin_auth
):
    client.post("/api/v1/types/TEST_OK/pause", headers=admin_auth)
    event_id = ingest(client, auth, "TEST_OK", {})  # still accepted (202)
    other = ingest(client, auth, "no.handler", {})
    with app.app_context():
        get_queue().huey.flush()  # the messages as if a worker had taken them
    _process(app, event_id)
    _process(app, other)
    assert {i: e["status"] for i, e in events_by_id(app, [event_id, other]).items()} == {
        event_id: "PENDING",
        other: "PROCESSED",
    }
    assert attempt_count(app, event_id) == 0

    response = client.post("/api/v1/types/TEST_OK/resume", headers=admin_auth)
    assert response.status_code == 200
    with app.app_context():
        assert get_queue().messages_waiting() == 1
        message = get_queue().take(1)
    assert message == [event_id]
    _process(app, event_id)
    assert events_by_id(app, [event_id])[event_id]["status"] == "PROCESSED"
    assert attempt_count(app, event_id) == 1


def test_recovery_leaves_a_paused_types_events_alone_then_orphans_them_by_its_policy(
    client, app, auth, admin_auth
):
    """TEST_TWO_ATTEMPTS has max_attempts=2: an orphaned second attempt goes to the DLQ, where the
    global 5 attempts would retry it. While the type is paused, recovery touches none of it."""
    orphan = ingest(client, auth, "TEST_TWO_ATTEMPTS", {})
    waiting = ingest(client, auth, "TEST_TWO_ATTEMPTS", {})
    _process(app, orphan)  # attempt 1 fails: RETRYING
    with app.app_context():
        settings = app.config["EVENTFLOW"]
        long_ago = utcnow() - timedelta(seconds=settings.visibility_timeout_seconds + 60)
        db.session.execute(
            update(Event)
            .where(Event.id == uuid.UUID(orphan))
            .values(status="PROCESSING", attempts=2, locked_at=long_ago, locked_by="gone:1")
        )
        db.session.execute(
            update(Event).where(Event.id == uuid.UUID(waiting)).values(next_attempt_at=long_ago)
        )
        db.session.commit()
        get_queue().huey.flush()  # no message for either: recovery would re-send `waiting`
    client.post("/api/v1/types/TEST_TWO_ATTEMPTS/pause", headers=admin_auth)
    before = events_by_id(app, [orphan, waiting])
    with app.app_context():
        report = recover(get_queue(), settings)
        assert (report.resent, report.orphans_failed, report.orphans_retried) == (0, 0, 0)
        assert get_queue().messages_waiting() == 0
    assert events_by_id(app, [orphan, waiting]) == before

    client.post("/api/v1/types/TEST_TWO_ATTEMPTS/resume", headers=admin_auth)
    with app.app_context():
        report = recover(get_queue(), settings)
    assert report.orphans_failed == 1 and report.orphans_retried == 0
    assert events_by_id(app, [orphan])[orphan]["status"] == "FAILED"


def test_the_dashboard_shows_types_and_lets_admins_pause_and_resume(client, app, make_user):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    page = client.get("/dashboard/types").get_data(as_text=True)
    assert 'data-type="TEST_OK" data-paused="false"' in page
    assert 'data-action="pause"' in page and "2 attempts" in page  # TEST_TWO_ATTEMPTS' policy

    token = csrf_token(client, "/dashboard/types")
    response = client.post(
        "/dashboard/types/TEST_OK/pause",
        data={"csrf_token": token, "next": "/dashboard/types"},
        follow_redirects=True,
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "TEST_OK is paused" in page
    assert 'data-type="TEST_OK" data-paused="true"' in page
    assert f"by {admin.email}" in page
    client.post(
        "/dashboard/types/TEST_OK/resume",
        data={"csrf_token": csrf_token(client, "/dashboard/types")},
    )
    assert audit_rows(app) == [
        ("pause", "TEST_OK", admin.email),
        ("resume", "TEST_OK", admin.email),
    ]


def test_a_viewer_sees_the_types_page_without_buttons_and_cannot_post(client, app, make_user):
    viewer = make_user(role="viewer")
    with app.app_context():
        from eventflow import event_types

        event_types.pause_type(None, "TEST_OK")
    assert log_in(client, viewer.email).status_code == 302
    page = client.get("/dashboard/types").get_data(as_text=True)
    assert 'data-type="TEST_OK" data-paused="true"' in page and "by command line" in page
    assert "data-action=" not in page
    response = client.post(
        "/dashboard/types/TEST_OK/resume",
        data={"csrf_token": csrf_token(client, "/dashboard/types")},
    )
    assert response.status_code == 403
    assert audit_rows(app) == [("pause", "TEST_OK", "command line")]


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"max_attempts": 0}, "max_attempts must be 1 or more"),
        ({"max_attempts": 2.5}, "max_attempts must be a whole number"),
        ({"max_attempts": True}, "max_attempts must be a whole number"),
        ({"retry_base_seconds": 0}, "retry_base_seconds must be a positive number"),
        ({"retry_max_seconds": -1}, "retry_max_seconds must be a positive number"),
        ({"retry_max_seconds": float("inf")}, "retry_max_seconds must be a positive number"),
        ({"retry_base_seconds": "1"}, "retry_base_seconds must be a number"),
        ({"retry_base_seconds": 2, "retry_max_seconds": 1}, "must not exceed retry_max_seconds"),
    ],
)
def test_a_handlers_policy_is_checked_when_it_is_declared(policy, message):
    with pytest.raises(ValueError, match=message):
        handler("X", **policy)
