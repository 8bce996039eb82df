"""The Errors page: error groups with their last day, sample traceback, replay and status."""

from __future__ import annotations

from typing import Any

from flask import g, render_template, request, url_for
from flask.typing import ResponseReturnValue

from .. import error_groups
from ..errors import ApiError
from ..models import GroupStatus
from ..schemas.parsing import parse_query, validate
from ..schemas.requests import ErrorGroupPath, ErrorGroupQuery, GroupStatusChange
from . import bp
from .access import wants_fragment
from .views import _outcome as report_outcome  # how every dashboard action reports back

PAGE_SIZE = 25
GROUP_STATUSES = [status.value for status in GroupStatus]
# What each status button does, by the status it sets.
STATUS_ACTIONS = {"resolved": "Resolve", "ignored": "Ignore", "open": "Reopen"}


def _listing_url(filters: dict[str, str], page_no: int = 1) -> str:
    args: dict[str, Any] = {k: v for k, v in filters.items() if v}
    if page_no > 1:
        args["page"] = page_no
    return url_for("dashboard.list_error_groups", **args)


@bp.get("/errors")
def list_error_groups() -> ResponseReturnValue:
    filters = {name: request.args.get(name, "").strip() for name in ("status", "type")}
    args = {**filters, "page": request.args.get("page", ""), "limit": str(PAGE_SIZE)}
    page, error = None, None
    try:
        # A form's empty field is no filter.
        query = parse_query(ErrorGroupQuery, {k: v for k, v in args.items() if v})
        page = error_groups.list_groups(
            status=query.status, event_type=query.type, page=query.page, limit=query.limit
        )
    except ApiError as exc:
        error = exc.message
    url = _listing_url(filters, page.page if page else 1)
    context: dict[str, Any] = dict(
        url=url,
        page=page,
        error=error,
        filters=filters,
        statuses=GROUP_STATUSES,
        status_actions=STATUS_ACTIONS,
        page_url=lambda n: _listing_url(filters, n),
    )
    status = 400 if error else 200
    if not wants_fragment():
        return render_template("dashboard/errors.html", **context), status
    fragment = render_template("dashboard/partials/error_groups.html", **context)
    return fragment, status, {"HX-Push-Url": url}


def _group_id(raw: str) -> int:
    return validate(ErrorGroupPath, {"group_id": raw}, "path").group_id


@bp.post("/errors/<group_id>/replay")
def replay_error_group(group_id: str) -> ResponseReturnValue:
    count = error_groups.replay_group(g.user, _group_id(group_id))
    if count == 0:
        return report_outcome(
            "Nothing to replay: no event of this group is in the DLQ.", level="info"
        )
    noun = "event" if count == 1 else "events"
    return report_outcome(
        f"Replayed {count:,} {noun} of error group {group_id}: back in the queue."
    )


@bp.post("/errors/<group_id>/status")
def change_error_group_status(group_id: str) -> ResponseReturnValue:
    wanted = validate(GroupStatusChange, {"status": request.form.get("status", "")}, "body")
    view = error_groups.set_group_status(g.user, _group_id(group_id), GroupStatus(wanted.status))
    return report_outcome(f"Error group {view.group.id} is now {view.group.status}.")
