"""GET /api/v1/events/{id} and GET /api/v1/events: ownership, pagination, filters."""

from datetime import datetime

from tests.conftest import bearer


def _post(client, headers, event_type="A", payload=None):
    response = client.post(
        "/api/v1/events", json={"type": event_type, "payload": payload or {}}, headers=headers
    )
    assert response.status_code == 202
    return response.get_json()["eventId"]


def test_get_event_returns_the_documented_fields(client, auth):
    event_id = _post(client, auth, "ORDER_CREATED", {"items": [{"price": 1, "qty": 1}]})
    body = client.get(f"/api/v1/events/{event_id}", headers=auth).get_json()
    assert set(body) == {
        "id",
        "type",
        "payload",
        "status",
        "result",
        "attempts",
        "last_error",
        "created_at",
        "processed_at",
        "payload_versions",  # the earlier payloads an edit-and-replay kept
    }
    assert body["id"] == event_id
    assert body["payload_versions"] == []
    assert body["status"] == "PENDING"
    assert body["attempts"] == 0
    assert body["result"] is None and body["processed_at"] is None
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset().total_seconds() == 0


def test_another_users_event_and_unknown_or_malformed_ids_are_404(client, make_user):
    alice = bearer(client, make_user().email)
    bob = bearer(client, make_user().email)
    event_id = _post(client, alice)
    for path, headers in [
        (f"/api/v1/events/{event_id}", bob),
        ("/api/v1/events/00000000-0000-0000-0000-000000000000", alice),
        ("/api/v1/events/not-a-uuid", alice),
        ("/api/v1/events/%00", alice),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == 404, path
        assert response.get_json()["error"]["code"] == "event_not_found"


def test_admin_sees_every_event(client, make_user, admin_auth):
    alice = bearer(client, make_user().email)
    event_id = _post(client, alice)
    assert client.get(f"/api/v1/events/{event_id}", headers=admin_auth).status_code == 200
    listing = client.get("/api/v1/events", headers=admin_auth).get_json()
    assert [item["id"] for item in listing["items"]] == [event_id]


def test_list_is_newest_first_own_events_only_and_paginated(client, make_user):
    alice = bearer(client, make_user().email)
    bob = bearer(client, make_user().email)
    mine = [_post(client, alice, payload={"n": n}) for n in range(5)]
    _post(client, bob)
    first = client.get("/api/v1/events?limit=2", headers=alice).get_json()
    assert first["total"] == 5 and first["pages"] == 3 and first["page"] == 1
    assert first["limit"] == 2
    assert [i["id"] for i in first["items"]] == mine[::-1][:2]
    last = client.get("/api/v1/events?limit=2&page=3", headers=alice).get_json()
    assert [i["id"] for i in last["items"]] == [mine[0]]
    beyond = client.get("/api/v1/events?limit=2&page=9", headers=alice).get_json()
    assert beyond["items"] == [] and beyond["total"] == 5


def test_default_limit_is_20(client, auth):
    for _ in range(21):
        _post(client, auth)
    body = client.get("/api/v1/events", headers=auth).get_json()
    assert body["limit"] == 20 and len(body["items"]) == 20 and body["pages"] == 2


def test_filters_by_status_and_type(client, auth):
    _post(client, auth, "ORDER_CREATED")
    _post(client, auth, "PAGE_VIEW")
    by_type = client.get("/api/v1/events?type=PAGE_VIEW", headers=auth).get_json()
    assert [i["type"] for i in by_type["items"]] == ["PAGE_VIEW"]
    pending = client.get("/api/v1/events?status=PENDING", headers=auth).get_json()
    assert pending["total"] == 2
    processed = client.get("/api/v1/events?status=processed", headers=auth).get_json()
    assert processed["total"] == 0


def test_bad_query_values_are_400(client, auth):
    for query, code in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("page=0", "invalid_page"),
        ("page=x", "invalid_page"),
        ("status=DONE", "invalid_status"),
        ("type=bad%20type", "invalid_type"),
        ("type=A%0A", "invalid_type"),  # a trailing newline is not a type character
        ("type=", "invalid_type"),  # empty is a value, not "no filter"
        ("limit=", "invalid_limit"),
        ("status=", "invalid_status"),
    ]:
        response = client.get(f"/api/v1/events?{query}", headers=auth)
        assert response.status_code == 400, query
        assert response.get_json()["error"]["code"] == code, query
    assert client.get("/api/v1/events?limit=100", headers=auth).status_code == 200


def test_an_admins_user_filter_with_a_nul_is_400_not_500(client, admin_auth):
    response = client.get("/api/v1/events?user=a%00b", headers=admin_auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_user"


def test_unknown_api_paths_and_methods_use_the_envelope(client, auth):
    missing = client.get("/api/v1/nothing-here", headers=auth)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"
    wrong = client.put("/api/v1/events", headers=auth)
    assert wrong.status_code == 405
    assert wrong.get_json()["error"]["code"] == "method_not_allowed"
    # /events/batch is not an event id: GET there is a wrong method, not an unknown event.
    batch = client.get("/api/v1/events/batch", headers=auth)
    assert batch.status_code == 405
    assert set(batch.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_admin_routes_are_403_for_ordinary_users(client, auth):
    for method, path in [
        ("post", "/api/v1/events/00000000-0000-0000-0000-000000000000/replay"),
        ("get", "/api/v1/dlq"),
        ("post", "/api/v1/dlq/replay"),
    ]:
        response = getattr(client, method)(path, headers=auth, json={})
        assert response.status_code == 403, path
        assert response.get_json()["error"]["code"] == "forbidden"
