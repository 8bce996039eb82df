"""Edit and replay: a FAILED event runs again with a corrected payload; every earlier payload
is kept and shown, with a diff on the event page (CONTRACT §10)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select, text

from eventflow.extensions import db
from eventflow.models import AuditEntry
from tests import processes
from tests.conftest import bearer
from tests.pipeline import ingest, statuses, wait_terminal
from tests.test_dashboard_views import htmx, log_in, page_token


@pytest.fixture(scope="module")
def edit_worker(migrated, base_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("edit-worker") / "worker.log"
    proc = processes.start_worker(base_env, log, "--workers", "2")
    yield proc
    proc.stop()


@pytest.fixture
def admin(make_user):
    return make_user(admin=True)


@pytest.fixture
def admin_headers(client, admin):
    return bearer(client, admin.email)


@pytest.fixture
def failed(app, client, auth, tmp_path, edit_worker):
    """An event whose handler refuses its payload: FAILED, with the file of payloads seen."""
    seen = tmp_path / "seen.jsonl"
    payload = {"seen": str(seen), "order": 1001, "customer": {"id": "c-7"}}
    event_id = ingest(client, auth, "TEST_NEEDS_FIX", payload)
    assert wait_terminal(app, [event_id]) == {event_id: "FAILED"}
    return event_id, payload, seen


def seen_payloads(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_rows(app, action: str) -> list[tuple]:
    with app.app_context():
        rows = db.session.scalars(select(AuditEntry).where(AuditEntry.action == action))
        return [(row.actor_id, row.target) for row in rows]


def test_the_handler_sees_the_edited_payload_and_the_old_one_is_kept_in_the_api(
    app, client, auth, admin, admin_headers, failed
):
    event_id, original, seen = failed
    edited = {**original, "fixed": True, "customer": {"id": "c-8"}}

    response = client.post(
        f"/api/v1/events/{event_id}/replay", json={"payload": edited}, headers=admin_headers
    )
    assert (response.status_code, response.get_json()) == (
        202,
        {"eventId": event_id, "status": "queued"},
    )
    assert wait_terminal(app, [event_id]) == {event_id: "PROCESSED"}
    assert seen_payloads(seen) == [original, edited]

    body = client.get(f"/api/v1/events/{event_id}", headers=auth).get_json()
    assert (body["payload"], body["result"]) == (edited, {"fixed": True})
    [version] = body["payload_versions"]
    assert (version["version"], version["payload"]) == (1, original)
    assert version["replaced_by"] == str(admin.id) and version["replaced_at"]
    assert audit_rows(app, "edit_payload") == [(admin.id, event_id)]


def test_the_event_page_shows_the_versions_and_their_diff_and_edits_from_the_form(
    app, client, admin, failed
):
    event_id, original, seen = failed
    assert log_in(client, admin.email).status_code == 302
    page = client.get(f"/dashboard/events/{event_id}").get_data(as_text=True)
    assert 'data-block="edit-payload"' in page and "Payload versions" not in page

    token = page_token(client, f"/dashboard/events/{event_id}")
    edited = {**original, "fixed": True}
    response = client.post(
        f"/dashboard/events/{event_id}/edit",
        data={"payload": json.dumps(edited, indent=2)},
        headers=htmx(token),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "back in the queue with the edited payload" in response.get_data(as_text=True)
    assert wait_terminal(app, [event_id]) == {event_id: "PROCESSED"}

    page = client.get(f"/dashboard/events/{event_id}").get_data(as_text=True)
    assert "Payload versions" in page and "Version 1 → 2" in page
    assert '<span class="diff-add">+  &#34;fixed&#34;: true' in page
    assert 'data-block="old-payload"' in page and "&#34;customer&#34;" in page
    assert admin.email in page  # who replaced it
    assert 'data-block="edit-payload"' not in page  # PROCESSED: nothing to edit
    assert seen_payloads(seen)[-1] == edited


def test_bad_edits_are_refused_and_change_nothing(
    app, client, auth, admin, admin_headers, failed, make_user
):
    event_id, original, seen = failed
    path = f"/api/v1/events/{event_id}/replay"
    for body, status, code in [
        ({"payload": [1, 2]}, 400, "invalid_payload"),
        ({"payload": {"text": "nul \u0000"}}, 400, "invalid_payload"),
        ({"payload": {}, "type": "X"}, 400, "unknown_field"),
        ({"payload": {"blob": "x" * (1024 * 1024)}}, 413, "payload_too_large"),
    ]:
        response = client.post(path, json=body, headers=admin_headers)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code)
    viewer = make_user()
    with app.app_context():
        db.session.execute(
            text("UPDATE users SET role = 'viewer' WHERE id = :id"), {"id": viewer.id}
        )
        db.session.commit()
    for headers in (auth, bearer(client, viewer.email)):
        response = client.post(path, json={"payload": {"fixed": True}}, headers=headers)
        assert response.status_code == 403
    unknown = client.post(
        f"/api/v1/events/{uuid.uuid4()}/replay", json={"payload": {}}, headers=admin_headers
    )
    assert unknown.status_code == 404

    body = client.get(f"/api/v1/events/{event_id}", headers=admin_headers).get_json()
    assert (body["status"], body["payload"], body["payload_versions"]) == ("FAILED", original, [])
    assert len(seen_payloads(seen)) == 1 and audit_rows(app, "edit_payload") == []

    # Only FAILED events: a processed one is a 409, and nothing is kept or audited.
    done = ingest(client, auth, "TEST_OK", {})
    wait_terminal(app, [done])
    response = client.post(
        f"/api/v1/events/{done}/replay", json={"payload": {"x": 1}}, headers=admin_headers
    )
    assert (response.status_code, response.get_json()["error"]["code"]) == (409, "not_in_dlq")
    assert statuses(app, [done]) == {done: "PROCESSED"} and audit_rows(app, "edit_payload") == []

    # The dashboard's form says what is wrong with the JSON, and changes nothing either.
    assert log_in(client, admin.email).status_code == 302
    token = page_token(client, f"/dashboard/events/{event_id}")
    response = client.post(
        f"/dashboard/events/{event_id}/edit", data={"payload": "{not json"}, headers=htmx(token)
    )
    assert response.status_code == 400 and "not valid JSON" in response.get_data(as_text=True)
    assert statuses(app, [event_id]) == {event_id: "FAILED"}
