"""Error groups: list and read them (admins and viewers), change their status, replay one."""

from __future__ import annotations

from .. import error_groups
from ..models import GroupStatus
from ..schemas.requests import ErrorGroupPath, ErrorGroupQuery, GroupStatusChange
from ..schemas.responses import (
    ErrorGroupDetail,
    ErrorGroupPage,
    Replayed,
    error_group_detail,
    error_group_page,
)
from . import bp
from .inputs import acting_user, admin_required, staff_required
from .operation import operation

STAFF_ERRORS = {401: "", 403: "forbidden: for admins and viewers only.", 503: ""}
ADMIN_ERRORS = {401: "", 403: "forbidden: for admins only.", 503: ""}
NOT_FOUND = {404: "error_group_not_found: no such group, or a malformed id."}


@bp.get("/error-groups")
@staff_required
@operation(
    "Error groups: failed attempts by fingerprint, most failures in the last 24 h first",
    tag="error-groups",
    auth="access",
    query=ErrorGroupQuery,
    responses={200: ErrorGroupPage},
    errors={
        **STAFF_ERRORS,
        400: "invalid_page, invalid_limit, invalid_status, invalid_type, page_too_deep.",
    },
)
def list_error_groups(query: ErrorGroupQuery) -> ErrorGroupPage:
    page = error_groups.list_groups(
        status=query.status, event_type=query.type, page=query.page, limit=query.limit
    )
    return error_group_page(page)


@bp.get("/error-groups/<group_id>")
@staff_required
@operation(
    "One error group, with its sample traceback and its last 24 hours",
    tag="error-groups",
    auth="access",
    path=ErrorGroupPath,
    responses={200: ErrorGroupDetail},
    errors={**STAFF_ERRORS, **NOT_FOUND},
)
def get_error_group(group_id: int) -> ErrorGroupDetail:
    return error_group_detail(error_groups.get_group(group_id))


@bp.patch("/error-groups/<group_id>")
@admin_required
@operation(
    "Resolve, ignore or reopen an error group",
    tag="error-groups",
    auth="access",
    path=ErrorGroupPath,
    body=GroupStatusChange,
    responses={200: ErrorGroupDetail},
    errors={
        **ADMIN_ERRORS,
        **NOT_FOUND,
        400: "invalid_json, invalid_body, unknown_field, invalid_status.",
        413: "",
    },
    description="A resolved group reopens when its error recurs; an ignored one stays "
    "ignored. Recorded in the audit log.",
)
def change_error_group(group_id: int, body: GroupStatusChange) -> ErrorGroupDetail:
    status = GroupStatus(body.status)
    view = error_groups.set_group_status(acting_user(), group_id, status)
    return error_group_detail(view)


@bp.post("/error-groups/<group_id>/replay")
@admin_required
@operation(
    "Replay the error group's DLQ events",
    tag="error-groups",
    auth="access",
    path=ErrorGroupPath,
    responses={202: Replayed},
    errors={**ADMIN_ERRORS, **NOT_FOUND},
    description="Exactly the FAILED events whose latest failure is in the group, with a "
    "fresh set of attempts each. Recorded in the audit log with the count.",
)
def replay_error_group(group_id: int) -> tuple[dict[str, int], int]:
    return {"replayed": error_groups.replay_group(acting_user(), group_id)}, 202
