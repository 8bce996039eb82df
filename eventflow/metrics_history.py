"""Metrics history, read: per-minute rollups summed into a range's steps, and their retention.

The rows are written by every web and worker process (eventflow/tasks/history.py). A range is
read with one grouped query over the primary key's `minute`; steps with no row come back as
zeros, so a chart has no gaps. Percentiles are estimated from the summed latency histogram:
the rank's bucket, interpolated linearly between its bounds (so within a 1-2-5 step).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, func, select

from .extensions import db
from .models import HISTORY_COUNTS, LATENCY_BOUNDS_MS, LATENCY_COLUMNS, metric_minutes
from .retention import claim_run

# range -> (its length, the step its points are summed over), both in seconds.
RANGES = {
    "1h": (3600, 60),
    "24h": (24 * 3600, 5 * 60),
    "7d": (7 * 24 * 3600, 3600),
    "30d": (30 * 24 * 3600, 6 * 3600),
}
METRICS_RETENTION_JOB = "metrics_history"
# How often the workers delete rows past the retention (one minute's rows are small).
METRICS_RETENTION_INTERVAL = timedelta(hours=1)
CSV_FIELDS = ("t", *HISTORY_COUNTS, "p50_ms", "p95_ms", "p99_ms")


@dataclass(frozen=True)
class Point:
    t: datetime
    ingested: int
    processed: int
    failed: int
    retried: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class HistoryRange:
    range: str
    step_seconds: int
    points: list[Point]


def latency_percentile(buckets: list[int], fraction: float) -> float | None:
    """The latency at this fraction of the histogram's count (ms), None when it is empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index, n in enumerate(buckets):
        if seen + n >= rank:
            if index == len(LATENCY_BOUNDS_MS):  # beyond the last bound: all we know
                return float(LATENCY_BOUNDS_MS[-1])
            low = LATENCY_BOUNDS_MS[index - 1] if index else 0
            high = LATENCY_BOUNDS_MS[index]
            return round(low + (high - low) * (rank - seen) / n, 1)
        seen += n
    return None  # pragma: no cover - the loop reaches the rank


def read_history(
    range_name: str, event_type: str | None = None, *, now: float | None = None
) -> HistoryRange:
    """The range's points, oldest first, ending with the step that holds `now`."""
    length, step = RANGES[range_name]
    now_s = int(now if now is not None else time.time())
    last = now_s // step * step
    first = last - length + step
    bucket = (metric_minutes.c.minute - metric_minutes.c.minute % step).label("bucket")
    query = (
        select(bucket, *(func.sum(metric_minutes.c[c]) for c in HISTORY_COUNTS + LATENCY_COLUMNS))
        .where(metric_minutes.c.minute >= first, metric_minutes.c.minute < last + step)
        .group_by(bucket)
    )
    if event_type is not None:
        query = query.where(metric_minutes.c.type == event_type)
    sums = {row[0]: [int(n or 0) for n in row[1:]] for row in db.session.execute(query)}
    db.session.rollback()
    empty = [0] * (len(HISTORY_COUNTS) + len(LATENCY_COLUMNS))
    points = []
    for start in range(first, last + step, step):
        row = sums.get(start, empty)
        counts, buckets = row[: len(HISTORY_COUNTS)], row[len(HISTORY_COUNTS) :]
        points.append(
            Point(
                t=datetime.fromtimestamp(start, UTC),
                **dict(zip(HISTORY_COUNTS, counts, strict=True)),
                p50_ms=latency_percentile(buckets, 0.50),
                p95_ms=latency_percentile(buckets, 0.95),
                p99_ms=latency_percentile(buckets, 0.99),
            )
        )
    return HistoryRange(range_name, step, points)


def history_csv(history: HistoryRange) -> str:
    """The points as CSV with a header row; an unknown percentile is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for point in history.points:
        row: dict[str, Any] = asdict(point)
        row["t"] = point.t.isoformat().replace("+00:00", "Z")
        writer.writerow(row)
    return out.getvalue()


def forget_old_metrics(retention_days: int, *, now: float | None = None) -> int:
    """Delete rollups older than the retention, at most once an hour across all workers
    (periodic_runs, as retention's purge); the number of rows deleted."""
    if not claim_run(METRICS_RETENTION_JOB, METRICS_RETENTION_INTERVAL):
        return 0
    cutoff = int(now if now is not None else time.time()) - retention_days * 24 * 3600
    deleted = db.session.execute(delete(metric_minutes).where(metric_minutes.c.minute < cutoff))
    assert isinstance(deleted, CursorResult)  # what a DELETE returns: it has the rowcount
    db.session.commit()
    return deleted.rowcount
