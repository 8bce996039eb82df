"""Admin routes: replay one event, list and replay the dead-letter queue."""

import uuid

from .. import events
from ..filters import EventFilter
from ..models import Status
from ..schemas.requests import DlqQuery, DlqReplay, EventPath
from ..schemas.responses import EventPage, Queued, Replayed, event_page
from . import bp
from .inputs import acting_user, admin_required, current_viewer, staff_required
from .operation import operation

ADMIN_ERRORS = {401: "", 403: "forbidden: for admins only.", 503: ""}
STAFF_ERRORS = {401: "", 403: "forbidden: for admins and viewers only.", 503: ""}


@bp.post("/events/<event_id:event_id>/replay")
@admin_required
@operation(
    "Replay a FAILED event with a fresh set of attempts",
    tag="dlq",
    auth="access",
    path=EventPath,
    responses={202: Queued},
    errors={
        **ADMIN_ERRORS,
        404: "event_not_found: no such event, or a malformed id.",
        409: "not_in_dlq: only FAILED events can be replayed.",
    },
    description="The attempt history is kept.",
)
def replay_event(event_id: uuid.UUID) -> tuple[dict[str, object], int]:
    return {"eventId": events.replay_event(event_id, acting_user()), "status": "queued"}, 202


@bp.get("/dlq")
@staff_required
@operation(
    "The dead-letter queue: FAILED events, newest first",
    tag="dlq",
    auth="access",
    query=DlqQuery,
    responses={200: EventPage},
    errors={
        **ADMIN_ERRORS,
        400: "invalid_page, invalid_limit, invalid_cursor, invalid_type, page_and_cursor, "
        "page_too_deep (page × limit over 10,000: use cursor).",
    },
)
def list_dlq(query: DlqQuery) -> EventPage:
    page = events.list_events(
        current_viewer(),
        EventFilter(status=Status.FAILED, type=query.type),
        limit=query.limit,
        page=query.page,
        after=query.cursor,
    )
    return event_page(page)


@bp.post("/dlq/replay")
@admin_required
@operation(
    "Replay every DLQ event, or those of one type",
    tag="dlq",
    auth="access",
    body=DlqReplay,
    body_required=False,
    responses={202: Replayed},
    errors={
        **ADMIN_ERRORS,
        400: "invalid_json, invalid_body, unknown_field, invalid_type.",
        413: "",
    },
)
def replay_dlq(body: DlqReplay) -> tuple[dict[str, int], int]:
    return {"replayed": events.replay_dlq(acting_user(), body.type)}, 202
