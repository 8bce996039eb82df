"""Metrics history, written: each process counts per minute and type in memory, then upserts.

Ingest (web processes) counts `ingested`; the workers count `processed` with its latencies,
`failed` and `retried`. Nothing touches the database per event: a flush, every
EVENTFLOW_METRICS_FLUSH_SECONDS (60) and when the process stops (the worker's SIGTERM path,
gunicorn's worker_exit), writes everything counted since the last one with one upsert that adds
to the rows of `metric_minutes` (eventflow/models.py). A process killed between flushes loses
only what it counted since its last flush. Latencies go into a fixed histogram, whose buckets
add up across processes; eventflow/metrics_history.py reads percentiles from it.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask

from ..extensions import db
from ..models import HISTORY_COUNTS, LATENCY_BOUNDS_MS, LATENCY_COLUMNS, metric_minutes

if TYPE_CHECKING:
    from ..backend import Database  # the backend imports this package

logger = logging.getLogger(__name__)

COLUMNS = HISTORY_COUNTS + LATENCY_COLUMNS
_OFFSET = {name: index for index, name in enumerate(COLUMNS)}
_FIRST_BUCKET = len(HISTORY_COUNTS)

Key = tuple[int, str]  # (minute in unix seconds, event type)


def _minute(at: float | None) -> int:
    return int(time.time() if at is None else at) // 60 * 60


def latency_bucket(ms: float) -> int:
    """The index, among LATENCY_COLUMNS, of the bucket that holds this latency."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


class History:
    """One per app: this process's counts since its last flush, and the thread that flushes."""

    def __init__(self, app: Flask, database: Database, flush_seconds: float) -> None:
        self.app = app
        self.database = database
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._pending: dict[Key, list[int]] = {}
        self._pid: int | None = None

    def count(self, metric: str, types: Iterable[str], *, at: float | None = None) -> None:
        """Add one to `metric` of this minute (or `at`'s) for each type given, once per event."""
        offset = _OFFSET[metric]
        minute = _minute(at)
        with self._lock:
            for event_type in types:
                self._row(minute, event_type)[offset] += 1
        self._ensure_flusher()

    def processed(self, latencies: Iterable[tuple[str, float]], *, at: float | None = None) -> None:
        """Count processed events, each with its type and its latency in ms."""
        processed = _OFFSET["processed"]
        minute = _minute(at)
        with self._lock:
            for event_type, ms in latencies:
                row = self._row(minute, event_type)
                row[processed] += 1
                row[_FIRST_BUCKET + latency_bucket(ms)] += 1
        self._ensure_flusher()

    def _row(self, minute: int, event_type: str) -> list[int]:
        row = self._pending.get((minute, event_type))
        if row is None:
            row = self._pending[(minute, event_type)] = [0] * len(COLUMNS)
        return row

    def flush(self) -> int:
        """Write what was counted since the last flush (one upsert); the number of rows."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows = [
            {"minute": minute, "type": event_type, **dict(zip(COLUMNS, counts, strict=True))}
            for (minute, event_type), counts in pending.items()
        ]
        try:
            with self.app.app_context():
                stmt = self.database.insert(metric_minutes).values(rows)
                upsert = stmt.on_conflict_do_update(
                    index_elements=["minute", "type"],
                    set_={name: metric_minutes.c[name] + stmt.excluded[name] for name in COLUMNS},
                )
                with db.engine.begin() as conn:
                    conn.execute(upsert)
        except Exception:  # the database is away: keep the counts for the next flush
            logger.warning("could not write metrics history (%d rows)", len(rows), exc_info=True)
            self._restore(pending)
            return 0
        return len(rows)

    def _restore(self, pending: dict[Key, list[int]]) -> None:
        with self._lock:
            for key, counts in pending.items():
                row = self._row(*key)
                for index, n in enumerate(counts):
                    row[index] += n

    def _ensure_flusher(self) -> None:
        # Started by the first count in each process, so also in forked workers (gunicorn,
        # Huey's process mode), where a thread of the parent does not exist.
        if self._pid == os.getpid():
            return
        if self.app.testing:
            # An in-process test app: its test flushes it (flush_history) when it is done, so
            # nothing it counted lands in a later test's tables from a thread a minute later.
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._run, name="eventflow-history", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.flush_seconds)
            self.flush()


HISTORY_KEY = "eventflow.history"


def init_history(app: Flask, database: Database, flush_seconds: float) -> History:
    """The app's history writer (one per app, so per process)."""
    history = History(app, database, flush_seconds)
    app.extensions[HISTORY_KEY] = history
    return history


def flush_history(app: object) -> None:
    """Flush an app's history now (a process about to exit); anything else is ignored."""
    extensions = getattr(app, "extensions", None)
    if isinstance(extensions, dict) and HISTORY_KEY in extensions:
        extensions[HISTORY_KEY].flush()
