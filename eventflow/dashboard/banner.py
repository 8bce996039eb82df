"""The firing-alerts banner on every dashboard page (templates/dashboard/base.html)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import alerts
from ..extensions import db
from . import bp

logger = logging.getLogger(__name__)


def firing_alerts() -> list[alerts.AlertView]:
    """The firing rules, or none when the database cannot say: the banner never breaks a page
    (the error page of a database outage extends base.html too)."""
    try:
        return alerts.firing_alerts()
    except SQLAlchemyError:
        db.session.rollback()
        logger.warning("alert banner left out: the database did not answer", exc_info=True)
        return []


@bp.context_processor
def alert_banner() -> dict[str, Any]:
    # A function, not a list: only full pages call it (htmx fragments never extend base.html),
    # and it reads the few firing rows of alert_states, never the events.
    return {"firing_alerts": firing_alerts}
