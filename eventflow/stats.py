"""The dashboard's snapshot: rates, totals, backlog, latency and workers, from the counters.

The counters themselves (Redis or the database) are the pipeline's: eventflow/tasks/counters.py.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from .counts import count_by_status
from .extensions import db
from .models import Status, Worker, utcnow
from .tasks.counters import HISTORY_SECONDS, METRICS, Counters

RATE_WINDOW_SECONDS = 5  # per-second rates are averaged over the last few whole seconds
WORKER_ALIVE_SECONDS = 15
TERMINAL = (Status.PROCESSED, Status.DISCARDED)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return round(sorted_values[rank - 1], 1)


def pack_series(series: list[dict[str, int]]) -> dict[str, Any]:
    """The chart's seconds as one list per metric from `start`: a sixth of the bytes."""
    start = series[0]["t"] if series else None
    return {"start": start, **{m: [point[m] for point in series] for m in METRICS}}


def snapshot(stats: Counters, *, now: float | None = None, history: bool = True) -> dict[str, Any]:
    """The `stats` payload the dashboard shows: rates, totals, backlog, latency, workers.

    `point` is the chart's newest point (the last whole second); `series`, the chart's whole
    five minutes, only comes with `history` (a client needs it once, when it connects).
    """
    now_s = int(now if now is not None else time.time())
    series, totals, latencies = stats.read(
        now_s, HISTORY_SECONDS if history else RATE_WINDOW_SECONDS
    )
    window = series[-RATE_WINDOW_SECONDS:]
    rates = {
        f"{m}_per_s": round(sum(b[m] for b in window) / RATE_WINDOW_SECONDS, 2) for m in METRICS
    }
    counts = count_by_status()  # the counters kept as events move: no COUNT(*) of events
    alive_since = utcnow() - timedelta(seconds=WORKER_ALIVE_SECONDS)
    workers = db.session.scalar(
        select(func.count()).select_from(Worker).where(Worker.last_seen_at >= alive_since)
    )
    db.session.rollback()
    latencies.sort()
    payload: dict[str, Any] = {
        **rates,
        "queue_depth": counts.get(Status.PENDING, 0) + counts.get(Status.RETRYING, 0),
        "processing": counts.get(Status.PROCESSING, 0),
        "dlq_size": counts.get(Status.FAILED, 0),
        "totals": totals,
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
        },
        "workers": workers or 0,
        "point": series[-1],
        "at": now_s,
    }
    if history:
        payload["series"] = series
    return payload
