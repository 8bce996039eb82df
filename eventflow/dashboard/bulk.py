"""Bulk actions from the dashboard: count what a filtered view matches, confirm, follow progress.

The Events and DLQ pages send their filter form here (hx-include): a dry run answers with the
count and a confirmation, the confirmation creates the action, and its page shows the workers'
progress, polling each second while it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from flask import g, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from .. import bulk_actions, users
from ..bulk_actions import ACTIONS
from ..errors import ApiError
from ..filters import EventFilter
from ..schemas.parsing import parse_query, validate
from ..schemas.requests import BulkActionPath, EventQuery
from . import bp
from .access import wants_fragment
from .search import query_arguments, read_filters

MAX_NOTE = 1000


def parse_form_filter(form: Mapping[str, str]) -> tuple[EventFilter, dict[str, str]]:
    """A filtered view's form (the Events or DLQ page's fields, read as the Events page reads
    them) as the filter and the GET /events arguments that spell it; a 400 if one is bad."""
    arguments = query_arguments(read_filters(form))
    return parse_query(EventQuery, arguments).to_filter(), arguments


def _action(raw: str | None) -> str:
    if raw not in ACTIONS:
        raise ApiError(400, "invalid_action", "action must be replay or discard")
    return raw


@bp.get("/bulk/new")
def preview_bulk_action() -> ResponseReturnValue:
    """The dry run: how many FAILED events the view's filters match, and a confirmation."""
    action = _action(request.args.get("action"))
    where, arguments = parse_form_filter(request.args)
    return render_template(
        "dashboard/partials/bulk_confirm.html",
        action=action,
        matched=bulk_actions.count_matching(g.user, where),
        filtered=bool(arguments),
        fields=list(arguments.items()),  # hidden fields, read back by parse_form_filter
    )


@bp.post("/bulk")
def create_bulk_action() -> ResponseReturnValue:
    action = _action(request.form.get("action"))
    where, _ = parse_form_filter(request.form)
    note = request.form.get("note", "").strip()[:MAX_NOTE] or None
    bulk = bulk_actions.create_bulk_action(g.user, action, where, note)
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
