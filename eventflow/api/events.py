"""POST/GET /events, POST /events/batch and GET /events/{id}."""

import uuid

from flask import g, request

from .. import events, ingest
from ..errors import ApiError
from ..filters import EventFilter
from ..models import Event
from ..schemas.requests import EventPath, EventQuery, IngestHeaders, NewEvent, NewEvents
from ..schemas.responses import BatchAccepted, EventPage, EventView, Queued, event_page
from ..security import limit_ingest
from . import bp
from .inputs import bearer_required, current_credentials, current_viewer, json_body
from .operation import Link, operation

READ_EVENT = {
    "GetEvent": Link("api.get_event", parameters={"path.event_id": "$response.body#/eventId"})
}
INGEST_ERRORS = {
    401: "",
    413: "",
    429: "rate_limited: the user's ingest limit (EVENTFLOW_RATE_LIMIT_INGEST), when set.",
    503: "",
}


# ingest validates the body and the Idempotency-Key itself, on its hot path (fast_ingest.py
# answers most of these requests before Flask): NewEvent and IngestHeaders describe it.
@bp.post("/events")
@bearer_required(check_session=False)  # create_event's INSERT checks the session itself
@limit_ingest
@operation(
    "Ingest an event",
    tag="events",
    auth="access",
    body=NewEvent,
    headers=IngestHeaders,
    checked_by_use_case=True,
    responses={202: Queued, 200: Queued},
    errors={
        400: "invalid_json, invalid_body, unknown_field, invalid_type, invalid_payload, "
        "invalid_idempotency_key.",
        **INGEST_ERRORS,
    },
    description="202: committed and queued. 200: a repeat of an Idempotency-Key of this user; "
    "the first event's id, nothing created.",
    response_headers={202: {"Location": "The event's URL."}, 200: {"Location": "The event's URL."}},
    links={202: READ_EVENT, 200: READ_EVENT},
)
def create_event() -> tuple[dict[str, object], int, dict[str, str]]:
    key = ingest.check_idempotency_key(request.headers.get("Idempotency-Key"))
    event_type, payload, payload_json = ingest.validate_event(json_body())
    event_id, created = ingest.create_event(
        current_credentials(), event_type, payload, key, payload_json
    )
    headers = {"Location": f"/api/v1/events/{event_id}"}
    return {"eventId": event_id, "status": "queued"}, 202 if created else 200, headers


def _batch_body() -> object:
    """The batch's JSON body, parsed once: the rate limit counts its events before the view."""
    if "batch_body" not in g:
        g.batch_body = json_body()
    return g.batch_body


def _batch_cost() -> int:
    try:
        return ingest.batch_size(_batch_body())
    except ApiError:  # unreadable: counted as one request, answered by the view's 400
        return 1


@bp.post("/events/batch")
@bearer_required(check_session=False)  # create_events' INSERT checks the session itself
@limit_ingest(cost=_batch_cost)
@operation(
    "Ingest 1-1,000 events at once",
    tag="events",
    auth="access",
    body=NewEvents,
    checked_by_use_case=True,
    responses={202: BatchAccepted},
    errors={
        400: "invalid_json, invalid_body, unknown_field, invalid_events, too_many_events, or "
        "the first bad event's rule, named as events[i].field.",
        409: "idempotency_conflict: an event of the batch changed meanwhile; send it again.",
        **INGEST_ERRORS,
    },
    description="All events are committed before the 202, or none (nothing is written on an "
    "error). The rate limit counts every event.",
    links={
        202: {
            "GetFirstEvent": Link(
                "api.get_event", parameters={"path.event_id": "$response.body#/items/0/eventId"}
            )
        }
    },
)
def create_events() -> tuple[dict[str, object], int]:
    outcome = ingest.create_events(current_credentials(), ingest.validate_batch(_batch_body()))
    items = [
        {"eventId": event_id, "status": "queued" if created else "duplicate"}
        for event_id, created in outcome.items
    ]
    return {"items": items, "accepted": outcome.accepted, "duplicates": outcome.duplicates}, 202


@bp.get("/events/<event_id:event_id>")
@bearer_required
@operation(
    "One event",
    tag="events",
    auth="access",
    path=EventPath,
    responses={200: EventView},
    errors={
        401: "",
        404: "event_not_found: no such event, a malformed id, or another user's event.",
        503: "",
    },
)
def get_event(event_id: uuid.UUID) -> Event:
    return events.get_event(current_viewer(), event_id)


LISTING_ERRORS = {
    400: "invalid_page, invalid_limit, invalid_cursor, invalid_status, invalid_type, "
    "invalid_user, page_and_cursor, page_too_deep (page × limit over 10,000: use cursor).",
    401: "",
    503: "",
}


@bp.get("/events")
@bearer_required
@operation(
    "Events, newest first: your own (admins: everyone's)",
    tag="events",
    auth="access",
    query=EventQuery,
    responses={200: EventPage},
    errors=LISTING_ERRORS,
    description="By page number (with the total), or by cursor (`cursor=` to start, then "
    "`next_cursor` until it is null; stable while events arrive).",
)
def list_events(query: EventQuery) -> EventPage:
    page = events.list_events(
        current_viewer(),
        EventFilter(status=query.status, type=query.type, user=query.user),
        limit=query.limit,
        page=query.page,
        after=query.cursor,
    )
    return event_page(page)
