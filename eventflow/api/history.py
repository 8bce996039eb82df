"""Metrics history: per-minute rollups over a range, as JSON or CSV (admins and viewers)."""

from flask import Response

from ..metrics_history import history_csv, read_history
from ..schemas.requests import HistoryQuery
from ..schemas.responses import MetricsHistoryView
from . import bp
from .admin import STAFF_ERRORS
from .inputs import staff_required
from .operation import operation

CSV = "text/csv"


@bp.get("/metrics/history")
@staff_required
@operation(
    "Throughput, failures, retries and latency per step over the last hour, day, week or month",
    tag="operations",
    auth="access",
    query=HistoryQuery,
    responses={200: MetricsHistoryView},
    response_media={200: CSV},
    errors={**STAFF_ERRORS, 400: "invalid_range, invalid_type, invalid_format."},
    description="Kept per minute and event type for EVENTFLOW_METRICS_RETENTION_DAYS (30). "
    "Steps: 60 s (1h), 5 min (24h), 1 h (7d), 6 h (30d). The last point is the step in "
    "progress; each process writes its counts once a minute.",
)
def get_metrics_history(query: HistoryQuery) -> MetricsHistoryView | Response:
    history = read_history(query.range, query.type)
    if query.format == "csv":
        return Response(history_csv(history), mimetype=CSV)
    return MetricsHistoryView.model_validate(history)
