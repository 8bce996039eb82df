"""The firing-alerts banner on every dashboard page (templates/dashboard/base.html)."""

from __future__ import annotations

from typing import Any

from .. import alerts
from . import bp


@bp.context_processor
def alert_banner() -> dict[str, Any]:
    # A function, not a list: only full pages call it (htmx fragments never extend base.html),
    # and it reads the few firing rows of alert_states, never the events.
    return {"firing_alerts": alerts.firing_alerts}
