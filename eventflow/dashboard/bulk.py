"""Bulk actions from the dashboard: count what a filtered view matches, confirm, follow progress.

The Events and DLQ pages send their filter form here (hx-include): a dry run answers with the
count and a confirmation, the confirmation creates the action, and its page shows the workers'
progress, polling each second while it runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from flask import g, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from .. import bulk_actions, users
from ..bulk_actions import ACTIONS
from ..errors import ApiError
from ..schemas.parsing import validate
from ..schemas.requests import BulkActionPath, BulkFilter
from . import bp
from .access import wants_fragment

# Filter fields of the Events and DLQ forms a bulk action understands; `id` is the Events
# page's search by id (a whole id is also a prefix), `payload.<path>` its payload filters.
FIELDS = ("status", "type", "user", "error_group", "created_after", "created_before", "q")
MAX_NOTE = 1000


def _scalar(raw: str) -> Any:
    """A payload filter's value as the JSON scalar it spells (number, true, "text"), else text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if value is None or isinstance(value, bool | int | float | str) else raw


def parse_form_filter(form: Mapping[str, str]) -> BulkFilter:
    """A filter form's fields (empty ones are no filter) as the API's bulk filter, or a 400."""
    data: dict[str, Any] = {k: form[k].strip() for k in FIELDS if form.get(k, "").strip()}
    if form.get("id", "").strip():
        data["q"] = form["id"].strip()
    if data.get("error_group", "").isdigit():
        data["error_group"] = int(data["error_group"])
    payload = {
        key.removeprefix("payload."): _scalar(value)
        for key, value in form.items()
        if key.startswith("payload.") and value.strip()
    }
    if payload:
        data["payload"] = payload
    return validate(BulkFilter, data, "query")


def _action(raw: str | None) -> str:
    if raw not in ACTIONS:
        raise ApiError(400, "invalid_action", "action must be replay or discard")
    return raw


@bp.get("/bulk/new")
def preview_bulk_action() -> ResponseReturnValue:
    """The dry run: how many FAILED events the view's filters match, and a confirmation."""
    action = _action(request.args.get("action"))
    bulk_filter = parse_form_filter(request.args)
    matched = bulk_actions.count_matching(g.user, bulk_filter.event_filter())
    return render_template(
        "dashboard/partials/bulk_confirm.html",
        action=action,
        matched=matched,
        filtered=bool(bulk_filter.event_filter().as_dict()),
        fields=_as_form_fields(bulk_filter),
    )


def _as_form_fields(bulk_filter: BulkFilter) -> list[tuple[str, str]]:
    """The filter as hidden form fields, as parse_form_filter reads them back."""
    given = bulk_filter.model_dump(mode="json", exclude_none=True)
    fields = [(k, str(v)) for k, v in given.items() if k != "payload"]
    fields += [(f"payload.{k}", json.dumps(v)) for k, v in (bulk_filter.payload or {}).items()]
    return fields


@bp.post("/bulk")
def create_bulk_action() -> ResponseReturnValue:
    action = _action(request.form.get("action"))
    bulk_filter = parse_form_filter(request.form)
    note = request.form.get("note", "").strip()[:MAX_NOTE] or None
    bulk = bulk_actions.create_bulk_action(g.user, action, bulk_filter.event_filter(), note)
    target = url_for("dashboard.show_bulk_action", action_id=bulk.id)
    if wants_fragment():
        response = make_response("", 204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, code=303)


def _action_id(raw: str) -> uuid.UUID:
    """An action id from a URL, or the 404 of an unknown one."""
    return validate(BulkActionPath, {"action_id": raw}, "path").action_id


@bp.get("/bulk/<action_id>")
def show_bulk_action(action_id: str) -> ResponseReturnValue:
    bulk = bulk_actions.get_bulk_action(_action_id(action_id))
    creators = users.user_emails([bulk.created_by] if bulk.created_by else [])
    context = dict(bulk=bulk, creator=creators.get(bulk.created_by) if bulk.created_by else None)
    if wants_fragment():
        return render_template("dashboard/partials/bulk_progress.html", **context)
    return render_template("dashboard/bulk.html", **context)


@bp.post("/bulk/<action_id>/cancel")
def cancel_bulk_action(action_id: str) -> ResponseReturnValue:
    bulk = bulk_actions.cancel_bulk_action(g.user, _action_id(action_id))
    return redirect(url_for("dashboard.show_bulk_action", action_id=bulk.id), code=303)
