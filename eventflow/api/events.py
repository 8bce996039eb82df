"""POST/GET /events, POST /events/batch and GET /events/{id}."""

from flask import g, request

from .. import events, ingest
from ..errors import ApiError
from ..security import limit_ingest
from . import bp
from .inputs import bearer_required, current_credentials, current_viewer, json_body
from .serialize import event_to_dict, page_to_dict


@bp.post("/events")
@bearer_required(check_session=False)  # create_event's INSERT checks the session itself
@limit_ingest
def create_event():
    key = ingest.check_idempotency_key(request.headers.get("Idempotency-Key"))
    event_type, payload, payload_json = ingest.validate_event(json_body())
    event_id, created = ingest.create_event(
        current_credentials(), event_type, payload, key, payload_json
    )
    headers = {"Location": f"/api/v1/events/{event_id}"}
    return {"eventId": str(event_id), "status": "queued"}, 202 if created else 200, headers


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
def create_events():
    outcome = ingest.create_events(current_credentials(), ingest.validate_batch(_batch_body()))
    items = [
        {"eventId": event_id, "status": "queued" if created else "duplicate"}
        for event_id, created in outcome.items
    ]
    return {"items": items, "accepted": outcome.accepted, "duplicates": outcome.duplicates}, 202


@bp.get("/events/<event_id>")
@bearer_required
def get_event(event_id: str):
    return event_to_dict(events.get_event(current_viewer(), event_id))


@bp.get("/events")
@bearer_required
def list_events():
    args = request.args
    page = events.list_events(
        current_viewer(),
        page=args.get("page"),
        cursor=args.get("cursor"),
        limit=args.get("limit"),
        status=args.get("status"),
        event_type=args.get("type"),
        user=args.get("user"),
    )
    return page_to_dict(page)
