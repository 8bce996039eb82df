"""The Overview's History chart: a range of the metrics history, on the page and as CSV."""

from __future__ import annotations

from flask import Response, request
from flask.typing import ResponseReturnValue

from ..metrics_history import RANGES, HistoryRange, history_csv, read_history
from ..schemas.responses import MetricsHistoryView
from . import bp

DEFAULT_RANGE = "1h"


def chosen_range() -> str:
    """The `history` argument of the page, if it names a range; else the last hour."""
    wanted = request.args.get("history", DEFAULT_RANGE)
    return wanted if wanted in RANGES else DEFAULT_RANGE


def history_for_page(range_name: str) -> dict[str, object]:
    """The range as the API sends it (JSON-ready), for the page's chart."""
    history: HistoryRange = read_history(range_name)
    return MetricsHistoryView.model_validate(history).model_dump(mode="json")


@bp.get("/history.csv")
def download_history() -> ResponseReturnValue:
    """The chosen range as CSV (what GET /api/v1/metrics/history?format=csv gives)."""
    range_name = chosen_range()
    return Response(
        history_csv(read_history(range_name)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="eventflow-{range_name}.csv"'},
    )
