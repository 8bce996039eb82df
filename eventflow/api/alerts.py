"""Alerts: every rule with its state (admins and viewers)."""

from __future__ import annotations

from .. import alerts
from ..schemas.responses import AlertList, AlertRuleView
from . import bp
from .inputs import staff_required
from .operation import operation


@bp.get("/alerts")
@staff_required
@operation(
    "The alert rules with their state, as last evaluated (every recovery interval)",
    tag="operations",
    auth="access",
    responses={200: AlertList},
    errors={401: "", 403: "forbidden: for admins and viewers only.", 503: ""},
)
def list_alerts() -> AlertList:
    views = alerts.list_alerts()
    return AlertList(alerts=[AlertRuleView.model_validate(view) for view in views])
