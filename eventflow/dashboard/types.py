"""The Types page: every event type's state, policy and counts; pause and resume (admins)."""

from __future__ import annotations

from flask import g, render_template
from flask.typing import ResponseReturnValue

from .. import event_types
from ..schemas.parsing import validate
from ..schemas.requests import TypePath
from . import bp
from .views import _outcome as report_outcome  # how every dashboard action reports back


def _type_name(raw: str) -> str:
    return validate(TypePath, {"event_type": raw}, "path").event_type


@bp.get("/types")
def list_types() -> ResponseReturnValue:
    return render_template("dashboard/types.html", types=event_types.list_types())


@bp.post("/types/<event_type>/pause")
def pause_type(event_type: str) -> ResponseReturnValue:
    view = event_types.pause_type(g.user, _type_name(event_type))
    return report_outcome(
        f"{view.type} is paused: its events are accepted and wait until it is resumed."
    )


@bp.post("/types/<event_type>/resume")
def resume_type(event_type: str) -> ResponseReturnValue:
    view, sent = event_types.resume_type(g.user, _type_name(event_type))
    noun = "event" if sent == 1 else "events"
    return report_outcome(
        f"{view.type} is running again: {sent:,} waiting {noun} sent to the workers."
    )
