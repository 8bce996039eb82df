"""The viewer role and the audit log (CONTRACT §10): viewers see everything and change nothing;
every action is recorded once, with its actor and count, and the log cannot be changed."""

from __future__ import annotations

import re

import pytest

from eventflow.extensions import db
from eventflow.models import AuditEntry, Event, Status
from tests.conftest import bearer
from tests.test_dashboard_views import htmx, log_in, page_token


@pytest.fixture
def viewer(make_user):
    return make_user(role="viewer")


@pytest.fixture
def viewer_auth(client, viewer):
    return bearer(client, viewer.email)


@pytest.fixture
def failed_events(app, make_user):
    """Two FAILED events of another user (one ORDER, one MAIL) and one PROCESSED."""
    owner = make_user()
    with app.app_context():
        rows = [
            Event(user_id=owner.id, type=kind, payload={"n": n}, status=status.value)
            for n, (kind, status) in enumerate(
                [("ORDER", Status.FAILED), ("MAIL", Status.FAILED), ("ORDER", Status.PROCESSED)]
            )
        ]
        db.session.add_all(rows)
        db.session.commit()
        return [str(row.id) for row in rows]


def statuses(app, ids) -> list[str]:
    with app.app_context():
        return [db.session.get(Event, i).status for i in ids]


def audit_rows(app) -> list[dict]:
    with app.app_context():
        entries = db.session.query(AuditEntry).order_by(AuditEntry.id).all()
        return [
            {k: getattr(e, k) for k in ("actor", "action", "target", "filter", "count", "note")}
            for e in entries
        ]


# --- viewers through the API -------------------------------------------------------------------


def test_a_viewer_reads_everything_an_admin_reads(client, viewer_auth, failed_events):
    listed = client.get("/api/v1/events", headers=viewer_auth).get_json()
    assert {item["id"] for item in listed["items"]} == set(failed_events)  # other users' too
    one = client.get(f"/api/v1/events/{failed_events[0]}", headers=viewer_auth)
    assert one.status_code == 200 and one.get_json()["status"] == "FAILED"
    dlq = client.get("/api/v1/dlq", headers=viewer_auth)
    assert dlq.status_code == 200 and dlq.get_json()["total"] == 2
    assert client.get("/api/v1/audit", headers=viewer_auth).status_code == 200


def test_a_viewer_gets_403_on_every_action_and_nothing_changes(
    app, client, viewer_auth, failed_events
):
    before = audit_rows(app)
    for path, body in [
        (f"/api/v1/events/{failed_events[0]}/replay", None),
        ("/api/v1/dlq/replay", {}),
        ("/api/v1/dlq/replay", {"type": "ORDER"}),
    ]:
        response = client.post(path, json=body, headers=viewer_auth)
        assert response.status_code == 403, path
        assert response.get_json()["error"]["code"] == "forbidden"
    assert statuses(app, failed_events) == ["FAILED", "FAILED", "PROCESSED"]
    assert audit_rows(app) == before


def test_an_ordinary_user_cannot_read_the_admin_pages(client, auth):
    for path in ["/api/v1/dlq", "/api/v1/audit"]:
        assert client.get(path, headers=auth).status_code == 403, path


# --- the audit log ------------------------------------------------------------------------------


def test_each_replay_is_recorded_once_with_its_actor_target_and_count(
    app, client, make_user, failed_events
):
    admin = make_user(admin=True)
    headers = bearer(client, admin.email)
    assert (
        client.post(f"/api/v1/events/{failed_events[0]}/replay", headers=headers).status_code == 202
    )
    # Refused replays (not in the DLQ) record nothing.
    assert (
        client.post(f"/api/v1/events/{failed_events[2]}/replay", headers=headers).status_code == 409
    )
    replayed = client.post("/api/v1/dlq/replay", json={"type": "MAIL"}, headers=headers)
    assert replayed.get_json() == {"replayed": 1}

    actions = [row for row in audit_rows(app) if row["action"] != "create_user"]
    assert actions == [
        {"actor": admin.email, "action": "replay", "target": failed_events[0],
         "filter": None, "count": 1, "note": None},
        {"actor": admin.email, "action": "replay_all", "target": None,
         "filter": {"type": "MAIL"}, "count": 1, "note": None},
    ]  # fmt: skip

    page = client.get("/api/v1/audit?action=replay_all", headers=headers).get_json()
    assert [item["action"] for item in page["items"]] == ["replay_all"]
    assert page["items"][0]["actor_id"] == str(admin.id)
    by_actor = client.get(f"/api/v1/audit?actor={admin.email.upper()}", headers=headers)
    # The admin's own creation was the command line's (make_user), not theirs.
    assert [i["action"] for i in by_actor.get_json()["items"]] == ["replay_all", "replay"]


def test_user_creation_and_role_changes_are_recorded(app, client, runner):
    assert (
        client.post(
            "/api/v1/auth/register", json={"email": "new@example.com", "password": "long-enough"}
        ).status_code
        == 201
    )
    result = runner.invoke(
        args=["users", "create", "ops@example.com", "--role", "viewer", "--password", "pw-12345678"]
    )
    assert result.exit_code == 0, result.output
    assert "created viewer ops@example.com" in result.output
    result = runner.invoke(args=["users", "set-role", "new@example.com", "viewer"])
    assert result.exit_code == 0, result.output

    assert [(r["actor"], r["action"], r["target"], r["note"]) for r in audit_rows(app)] == [
        ("new@example.com", "create_user", "new@example.com", "user"),
        ("command line", "create_user", "ops@example.com", "viewer"),
        ("command line", "set_role", "new@example.com", "viewer"),
    ]


def test_cli_refuses_contradicting_role_flags(runner):
    result = runner.invoke(
        args=[
            "users",
            "create",
            "x@example.com",
            "--admin",
            "--role",
            "viewer",
            "--password",
            "pw-12345678",
        ]
    )
    assert result.exit_code != 0 and "--admin and --role" in result.output


def test_the_audit_log_has_no_way_to_change_it_and_rejects_bad_filters(client, admin_auth):
    for method in ("post", "put", "patch", "delete"):
        response = getattr(client, method)("/api/v1/audit", headers=admin_auth)
        assert response.status_code == 405, method
        assert response.get_json()["error"]["code"] == "method_not_allowed"
    bad = client.get("/api/v1/audit?action=drop_table", headers=admin_auth)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_action"
    assert client.get("/api/v1/audit?limit=0", headers=admin_auth).status_code == 400


# --- viewers in the dashboard -------------------------------------------------------------------


def test_a_viewer_sees_the_dashboard_without_action_buttons_and_cannot_post(
    app, client, viewer, failed_events
):
    assert log_in(client, viewer.email).status_code == 302
    for path in ["/dashboard/", "/dashboard/events", "/dashboard/dlq", "/dashboard/audit",
                 f"/dashboard/events/{failed_events[0]}"]:  # fmt: skip
        page = client.get(path)
        assert page.status_code == 200, path
        html = page.get_data(as_text=True)
        # No form that would act: only the log-out form posts.
        assert re.findall(r'<form method="post" action="([^"]+)"', html) == ["/dashboard/logout"]
    assert "viewer" in client.get("/dashboard/").get_data(as_text=True)

    token = page_token(client)
    replay_one = client.post(f"/dashboard/events/{failed_events[0]}/replay", headers=htmx(token))
    assert replay_one.status_code == 403
    assert "viewer role" in replay_one.get_data(as_text=True)
    assert client.post("/dashboard/dlq/replay", headers=htmx(token)).status_code == 403
    assert statuses(app, failed_events) == ["FAILED", "FAILED", "PROCESSED"]
    # Logging out is theirs to do.
    assert client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 302


def test_the_audit_page_lists_and_filters_the_entries(app, client, make_user, failed_events):
    admin = make_user(admin=True)
    assert log_in(client, admin.email).status_code == 302
    token = page_token(client)
    client.post(f"/dashboard/events/{failed_events[0]}/replay", headers=htmx(token))
    html = client.get("/dashboard/audit?action=replay").get_data(as_text=True)
    assert failed_events[0] in html and admin.email in html
    assert 'data-action="create_user"' not in html
    everything = client.get("/dashboard/audit").get_data(as_text=True)
    assert 'data-action="create_user"' in everything
    assert client.get("/dashboard/audit?action=nope").status_code == 400
