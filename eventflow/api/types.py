"""Event types: list them with their state (admins and viewers), pause and resume one (admins)."""

from __future__ import annotations

from .. import event_types
from ..schemas.requests import TypePath
from ..schemas.responses import TypeState
from . import bp
from .inputs import acting_user, admin_required, staff_required
from .operation import operation

STAFF_ERRORS = {401: "", 403: "forbidden: for admins and viewers only.", 503: ""}
ADMIN_ERRORS = {401: "", 403: "forbidden: for admins only.", 503: ""}
BAD_TYPE = {400: "invalid_type: not 1-64 characters of A-Z a-z 0-9 _ . -"}


@bp.get("/types")
@staff_required
@operation(
    "Event types: paused or not, retry policy, events by status",
    tag="types",
    auth="access",
    responses={200: list[TypeState]},
    errors=STAFF_ERRORS,
    description="Every type that has a handler, has events, or is paused, by name.",
)
def list_types() -> list[event_types.TypeView]:
    return event_types.list_types()


@bp.post("/types/<event_type>/pause")
@admin_required
@operation(
    "Pause a type: its events are accepted and wait until it is resumed",
    tag="types",
    auth="access",
    path=TypePath,
    responses={200: TypeState},
    errors={**ADMIN_ERRORS, **BAD_TYPE},
    description="No worker claims, retries or fails its events, and recovery does not re-send "
    "them; an event already processing finishes. Pausing a paused type changes nothing. "
    "Recorded in the audit log.",
)
def pause_type(event_type: str) -> event_types.TypeView:
    return event_types.pause_type(acting_user(), event_type)


@bp.post("/types/<event_type>/resume")
@admin_required
@operation(
    "Resume a paused type: its waiting events go to the workers",
    tag="types",
    auth="access",
    path=TypePath,
    responses={200: TypeState},
    errors={**ADMIN_ERRORS, **BAD_TYPE},
    description="Resuming a type not paused changes nothing. Recorded in the audit log.",
)
def resume_type(event_type: str) -> event_types.TypeView:
    view, _sent = event_types.resume_type(acting_user(), event_type)
    return view
