"""The infrastructure panel: Redis memory and clients, database size and connections.

The Overview polls it every few seconds and Prometheus scrapes it (/metrics), so a process reads
the servers at most once per CACHE_SECONDS and hands everyone else that reading. Each server is
read on its own: one that is down shows as "unavailable" beside the other's figures, never as
an error page. On the embedded default (SQLite, no Redis) only the database file's size applies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import redis
from flask import Flask, current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .extensions import db

if TYPE_CHECKING:
    from .backend import Backend

logger = logging.getLogger(__name__)

INFRASTRUCTURE_KEY = "eventflow.infrastructure"
CACHE_SECONDS = 5.0
T = TypeVar("T")


class Reading(StrEnum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # the server did not answer
    NOT_APPLICABLE = "not_applicable"  # the embedded default has no such server


@dataclass(frozen=True)
class RedisFigures:
    used_memory_bytes: int
    peak_memory_bytes: int
    maxmemory_bytes: int  # 0: no limit
    connected_clients: int


@dataclass(frozen=True)
class DatabaseFigures:
    database_bytes: int
    events_table_bytes: int | None  # with its indexes and TOAST; None where it does not apply
    connections: int | None  # open connections to this database; None where it does not apply


@dataclass(frozen=True)
class Infrastructure:
    database_name: str  # postgresql | sqlite
    database: DatabaseFigures | None
    database_reading: Reading
    redis: RedisFigures | None
    redis_reading: Reading
    read_at: float  # Unix time


def measure_redis(client: redis.Redis) -> RedisFigures:
    """INFO memory and clients, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.info("memory")
    pipe.info("clients")
    memory, clients = pipe.execute()
    return RedisFigures(
        used_memory_bytes=int(memory["used_memory"]),
        peak_memory_bytes=int(memory["used_memory_peak"]),
        maxmemory_bytes=int(memory.get("maxmemory", 0)),
        connected_clients=int(clients["connected_clients"]),
    )


_POSTGRESQL_SIZES = text(
    "SELECT pg_database_size(current_database()), pg_total_relation_size('events'),"
    " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())"
)


def measure_postgresql() -> DatabaseFigures:
    """The database's size, the events table's (indexes included), connections to it."""
    try:
        database, events, connections = db.session.execute(_POSTGRESQL_SIZES).one()
    finally:
        db.session.rollback()
    return DatabaseFigures(int(database), int(events), int(connections))


def measure_sqlite() -> DatabaseFigures:
    """The database file's size on disk, with its write-ahead log."""
    path = Path(db.engine.url.database or "")
    wal = path.with_name(path.name + "-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return DatabaseFigures(size, None, None)


class InfrastructureReader:
    """One per app: reads both servers at most once per CACHE_SECONDS, shared by all callers."""

    def __init__(self, backend: Backend, cache_seconds: float = CACHE_SECONDS) -> None:
        self.backend = backend
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._last: tuple[float, Infrastructure] | None = None

    def read(self) -> Infrastructure:
        # Callers arriving while a reading is under way wait for it rather than add their own.
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.cache_seconds:
                self._last = (now, self._measure())
            return self._last[1]

    def _measure(self) -> Infrastructure:
        database_name = self.backend.database.name
        database, database_reading = _read(self.backend.database.measure, SQLAlchemyError)
        redis_figures, redis_reading = _read(self.backend.broker.measure, redis.RedisError)
        if redis_reading is Reading.OK and redis_figures is None:
            redis_reading = Reading.NOT_APPLICABLE  # the broker has no Redis
        return Infrastructure(
            database_name, database, database_reading, redis_figures, redis_reading, time.time()
        )


def _read(measure: Callable[[], T | None], errors: type[Exception]) -> tuple[T | None, Reading]:
    try:
        return measure(), Reading.OK
    except (errors, OSError) as exc:
        logger.warning("infrastructure reading failed: %s", exc)
        return None, Reading.UNAVAILABLE


def init_infrastructure(app: Flask, backend: Backend) -> None:
    app.extensions[INFRASTRUCTURE_KEY] = InfrastructureReader(backend)


def read_infrastructure() -> Infrastructure:
    """The app's latest infrastructure reading (at most CACHE_SECONDS old)."""
    reader: InfrastructureReader = current_app.extensions[INFRASTRUCTURE_KEY]
    return reader.read()
