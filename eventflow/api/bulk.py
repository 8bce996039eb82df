"""Bulk actions: replay or discard every FAILED event a filter matches, in tracked runs."""

import uuid

from .. import bulk_actions
from ..filters import EventFilter
from ..models import BulkAction
from ..schemas.requests import BulkActionPath, BulkActionQuery, BulkActionRequest
from ..schemas.responses import BulkActionList, BulkActionStarted, BulkActionView, BulkMatched
from . import bp
from .admin import ADMIN_ERRORS
from .inputs import acting_user, admin_required, staff_required
from .operation import Link, operation

STAFF_ERRORS = {**ADMIN_ERRORS, 403: "forbidden: for admins and viewers only."}
NOT_FOUND = {404: "bulk_action_not_found: no such bulk action, or a malformed id."}
READ_ACTION = {
    "GetBulkAction": Link(
        "api.get_bulk_action", parameters={"path.action_id": "$response.body#/id"}
    )
}


@bp.post("/bulk-actions")
@admin_required
@operation(
    "Replay or discard every FAILED event a filter matches (or count them: dry_run)",
    tag="bulk",
    auth="access",
    body=BulkActionRequest,
    responses={200: BulkMatched, 202: BulkActionStarted},
    errors={
        **ADMIN_ERRORS,
        400: "invalid_json, invalid_body, unknown_field, invalid_action, invalid_status "
        "(only FAILED), invalid_type, invalid_user, invalid_created_after, "
        "invalid_created_before, invalid_q, invalid_payload_filter, invalid_error_group, "
        "invalid_dry_run, invalid_note.",
        413: "",
    },
    description="200 {matched}: a dry run, nothing changed. 202: the matching events are "
    "fixed now and the workers go through them in batches; follow GET /bulk-actions/{id}.",
    links={202: READ_ACTION},
)
def create_bulk_action(body: BulkActionRequest) -> tuple[dict[str, object], int]:
    event_filter = body.filter.to_filter() if body.filter else EventFilter()
    if body.dry_run:
        return {"matched": bulk_actions.count_matching(acting_user(), event_filter)}, 200
    bulk = bulk_actions.create_bulk_action(acting_user(), body.action, event_filter, body.note)
    return {"id": bulk.id, "matched": bulk.matched, "status": bulk.status}, 202


@bp.get("/bulk-actions")
@staff_required
@operation(
    "Bulk actions, newest first",
    tag="bulk",
    auth="access",
    query=BulkActionQuery,
    responses={200: BulkActionList},
    errors={**STAFF_ERRORS, 400: "invalid_page, invalid_limit."},
)
def list_bulk_actions(query: BulkActionQuery) -> bulk_actions.BulkActionPage:
    return bulk_actions.list_bulk_actions(query.page, query.limit)


@bp.get("/bulk-actions/<action_id>")
@staff_required
@operation(
    "One bulk action and its progress",
    tag="bulk",
    auth="access",
    path=BulkActionPath,
    responses={200: BulkActionView},
    errors={**STAFF_ERRORS, **NOT_FOUND},
)
def get_bulk_action(action_id: uuid.UUID) -> BulkAction:
    return bulk_actions.get_bulk_action(action_id)


@bp.post("/bulk-actions/<action_id>/cancel")
@admin_required
@operation(
    "Cancel a running bulk action: the events it has not reached stay FAILED",
    tag="bulk",
    auth="access",
    path=BulkActionPath,
    responses={200: BulkActionView},
    errors={
        **ADMIN_ERRORS,
        **NOT_FOUND,
        409: "not_running: the action has completed, failed or was cancelled already.",
    },
    description="It stops between batches; `done` is final in the answer.",
)
def cancel_bulk_action(action_id: uuid.UUID) -> BulkAction:
    return bulk_actions.cancel_bulk_action(acting_user(), action_id)
