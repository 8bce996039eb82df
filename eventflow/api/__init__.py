"""The /api/v1 JSON API: parse the request, call a use case, serialise the result."""

from flask import Blueprint
from werkzeug.routing import BaseConverter

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class EventIdConverter(BaseConverter):
    """The {event_id} segment: any text (a malformed id is the 404 of an unknown one), except
    the fixed routes beside it, so that GET /events/batch is a 405, not "no event 'batch'"."""

    regex = r"(?!batch$)[^/]+"


# Before the routes below are registered with the app (record_once runs in recording order).
bp.record_once(lambda state: state.app.url_map.converters.update(event_id=EventIdConverter))

from . import (  # noqa: E402,F401  (routes register on import)
    admin,
    alerts,
    audit,
    auth,
    bulk,
    docs,
    error_groups,
    events,
    health,
    history,
    types,
)
