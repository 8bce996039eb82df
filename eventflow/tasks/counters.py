"""Live counters and processing latency: one round trip per transition, read by the dashboard.

With Redis, counters live in per-second hashes and latencies in a capped list. In the embedded
mode they live in the `stat_buckets` table and latencies are read from processed events. Which
one a deployment uses is its broker's choice (eventflow/backend.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import Event, StatBucket

logger = logging.getLogger(__name__)

METRICS = ("ingested", "processed", "failed", "retried", "replayed")
HISTORY_SECONDS = 300  # the overview chart covers the last five minutes
LATENCY_SAMPLES = 1000
_BUCKET_TTL = HISTORY_SECONDS + 60
_KEY = "eventflow:stats"

# One point of the chart: {"t": second, metric: count, ...}.
Point = dict[str, int]
Reading = tuple[list[Point], dict[str, int], list[float]]


class Counters(Protocol):
    def record(self, counts: Mapping[str, int], latencies_ms: Iterable[float] = ()) -> None:
        """Add to the current second's counters (and the totals); keep the latencies."""
        ...

    def read(self, now: int, span: int = HISTORY_SECONDS) -> Reading:
        """(the `span` whole seconds before `now`, totals, recent latencies)."""
        ...


class RedisCounters:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add_to(
        self,
        pipe: redis.client.Pipeline,
        counts: Mapping[str, int],
        latencies_ms: Iterable[float] = (),
    ) -> None:
        """Queue the counter updates on a pipeline the caller executes (one round trip)."""
        second = int(time.time())
        bucket = f"{_KEY}:s:{second}"
        for metric, n in counts.items():
            if n:
                pipe.hincrby(bucket, metric, n)
                pipe.hincrby(f"{_KEY}:totals", metric, n)
        pipe.expire(bucket, _BUCKET_TTL)
        latencies = [f"{ms:.1f}" for ms in latencies_ms]
        if latencies:
            pipe.lpush(f"{_KEY}:latency", *latencies)
            pipe.ltrim(f"{_KEY}:latency", 0, LATENCY_SAMPLES - 1)

    def record(self, counts: Mapping[str, int], latencies_ms: Iterable[float] = ()) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.add_to(pipe, counts, latencies_ms)
        pipe.execute()

    def read(self, now: int, span: int = HISTORY_SECONDS) -> Reading:
        pipe = self.redis.pipeline(transaction=False)
        seconds = range(now - span, now)
        for second in seconds:
            pipe.hgetall(f"{_KEY}:s:{second}")
        pipe.hgetall(f"{_KEY}:totals")
        pipe.lrange(f"{_KEY}:latency", 0, LATENCY_SAMPLES - 1)
        *buckets, stored_totals, latencies = pipe.execute()
        series = [
            {"t": second, **{m: int(b.get(m.encode(), 0)) for m in METRICS}}
            for second, b in zip(seconds, buckets, strict=True)
        ]
        totals = {m: int(stored_totals.get(m.encode(), 0)) for m in METRICS}
        return series, totals, [float(v) for v in latencies]


class DatabaseCounters:
    def __init__(self, insert: Callable[[type[StatBucket]], postgresql.Insert | sqlite.Insert]):
        self.insert = insert  # the dialect's INSERT, which has ON CONFLICT

    def record(self, counts: Mapping[str, int], latencies_ms: Iterable[float] = ()) -> None:
        second = int(time.time())
        rows = [{"second": second, "metric": m, "count": n} for m, n in counts.items() if n]
        if not rows:
            return
        stmt = self.insert(StatBucket).values(rows)
        upsert = stmt.on_conflict_do_update(
            index_elements=["second", "metric"],
            set_={"count": StatBucket.count + stmt.excluded.count},
        )
        try:
            db.session.execute(upsert)
            db.session.commit()
        except Exception:  # counters must never break the pipeline they observe
            db.session.rollback()
            logger.warning("could not record stats %s", counts, exc_info=True)

    def read(self, now: int, span: int = HISTORY_SECONDS) -> Reading:
        rows = db.session.execute(
            select(StatBucket.second, StatBucket.metric, StatBucket.count).where(
                StatBucket.second >= now - span, StatBucket.second < now
            )
        ).all()
        by_second: dict[int, dict[str, int]] = {}
        for second, metric, count in rows:
            by_second.setdefault(second, {})[metric] = count
        series = [
            {"t": s, **{m: by_second.get(s, {}).get(m, 0) for m in METRICS}}
            for s in range(now - span, now)
        ]
        sums = db.session.execute(
            select(StatBucket.metric, func.sum(StatBucket.count)).group_by(StatBucket.metric)
        ).all()
        by_metric = {metric: total for metric, total in sums}
        totals = {m: int(by_metric.get(m) or 0) for m in METRICS}
        recent = db.session.execute(
            select(Event.created_at, Event.processed_at)
            .where(Event.processed_at.is_not(None))
            .order_by(Event.processed_at.desc())
            .limit(LATENCY_SAMPLES)
        ).all()
        latencies = [
            (r.processed_at - r.created_at).total_seconds() * 1000
            for r in recent
            if r.processed_at is not None
        ]
        return series, totals, latencies
