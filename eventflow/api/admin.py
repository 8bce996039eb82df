"""Admin routes: replay one event, list and replay the dead-letter queue."""

from flask import request

from .. import events
from ..errors import ApiError
from ..models import Status
from . import bp
from .inputs import admin_required, current_viewer, json_body
from .serialize import page_to_dict


@bp.post("/events/<event_id>/replay")
@admin_required
def replay_event(event_id: str):
    replayed = events.replay_event(event_id)
    return {"eventId": str(replayed), "status": "queued"}, 202


@bp.get("/dlq")
@admin_required
def list_dlq():
    args = request.args
    page = events.list_events(
        current_viewer(),
        page=args.get("page"),
        cursor=args.get("cursor"),
        limit=args.get("limit"),
        status=Status.FAILED.value,
        event_type=args.get("type"),
    )
    return page_to_dict(page)


@bp.post("/dlq/replay")
@admin_required
def replay_dlq():
    body = json_body() if request.get_data(cache=True).strip() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - {"type"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    return {"replayed": events.replay_dlq(body.get("type"))}, 202
