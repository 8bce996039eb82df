"""What EventFlow runs on, chosen once at start-up: the one place the embedded default differs.

Production runs on PostgreSQL + Redis; the embedded default (no DATABASE_URL, no REDIS_URL) on
SQLite + Huey's SQLite queue, with no server to install. `choose_backend(settings)`, called by
create_app, picks the two halves that differ, and the rest of EventFlow uses what it got
without asking which:

* the database, `PostgreSQL` or `SQLite`: engine options, the claim, completion and failure
  statements (one statement each on PostgreSQL), the counters' upsert, whether ingest group-commits;
* the broker, `RedisBroker` or `SqliteBroker`: Huey's storage, where the live counters live,
  how messages go out with their counters, and the state processes share (leases, locks,
  sets): Redis, or this process's memory when there is no Redis (`LocalState`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis
from flask import Flask, current_app
from huey import RedisHuey, SqliteHuey
from sqlalchemy import ColumnElement, Engine, Table, and_, func, type_coerce
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from . import infrastructure
from .config import Settings
from .models import Event, StatBucket
from .tasks import transitions
from .tasks.counters import Counters, DatabaseCounters, RedisCounters

if TYPE_CHECKING:
    from sqlite3 import Connection as SQLiteConnection

    from sqlalchemy.pool import ConnectionPoolEntry

    from .filters import Scalar

BACKEND_KEY = "eventflow.backend"
QUEUE_NAME = "eventflow"
# Redis must answer quickly or not at all: ingest answers 202 either way.
REDIS_OPTIONS: dict[str, Any] = dict(
    socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
)
# Take the lease if it is free, or extend it if its owner holds it: one atomic step.
_HOLD_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


# --- the database ---------------------------------------------------------------------------


class Database(Protocol):
    """What differs between PostgreSQL and SQLite."""

    @property
    def name(self) -> str: ...

    @property
    def group_commit(self) -> bool:
        """Whether concurrent ingests of a process share one INSERT and commit (group_commit.py)."""
        ...

    def insert(self, table: type[StatBucket] | Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ON CONFLICT (the counters' and history's upserts)."""
        ...

    def engine_options(self) -> dict[str, Any]:
        """Options for the app's engine (Flask-SQLAlchemy's SQLALCHEMY_ENGINE_OPTIONS)."""
        ...

    def ingest_engine_options(self) -> dict[str, Any]:
        """Options for ingest's autocommit engine (eventflow.extensions.ingest_engine)."""
        ...

    def prepare(self, engine: Engine) -> None:
        """Set up every new connection of the engine as this database needs."""
        ...

    def claim_events(
        self, event_ids: list[uuid.UUID], worker_id: str
    ) -> list[transitions.ClaimedEvent]: ...

    def complete_events(
        self, done: list[tuple[transitions.ClaimedEvent, str]]
    ) -> dict[uuid.UUID, float]: ...

    def finish_attempt(self, end: transitions.AttemptEnd) -> bool:
        """Record a failed attempt (and its error group) and move its event."""
        ...

    def payload_equals(self, path: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        """The event's payload has this JSON scalar at this path (eventflow/filters.py)."""
        ...

    def measure(self) -> infrastructure.DatabaseFigures:
        """Its size and connections, for the infrastructure panel."""
        ...


class PostgreSQL:
    name = "postgresql"
    group_commit = True

    def insert(self, table: type[StatBucket] | Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def engine_options(self) -> dict[str, Any]:
        # No pre-ping: it would cost a round trip per request. After a PostgreSQL restart the
        # first query on a stale connection fails (503), and SQLAlchemy then replaces the pool.
        return {"pool_size": 8, "max_overflow": 8, "pool_recycle": 1800}

    def ingest_engine_options(self) -> dict[str, Any]:
        # Its own pool, sized like the app's (the two together stay within 32 per process).
        return {"pool_size": 16, "max_overflow": 0, "pool_recycle": 1800}

    def prepare(self, engine: Engine) -> None:
        pass

    def claim_events(
        self, event_ids: list[uuid.UUID], worker_id: str
    ) -> list[transitions.ClaimedEvent]:
        return transitions.claim_events(event_ids, worker_id)

    def complete_events(
        self, done: list[tuple[transitions.ClaimedEvent, str]]
    ) -> dict[uuid.UUID, float]:
        return transitions.complete_events(done)

    def finish_attempt(self, end: transitions.AttemptEnd) -> bool:
        return transitions.finish_attempt(end)

    def payload_equals(self, path: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        # Containment, which the GIN jsonb_path_ops index on payload serves: 1 matches 1.0,
        # "1" does not match 1.
        nested: Any = value
        for key in reversed(path):
            nested = {key: nested}
        # The column's type is JSON with a JSONB variant: as JSON, contains() would be LIKE.
        return type_coerce(Event.payload, JSONB).contains(nested)

    def measure(self) -> infrastructure.DatabaseFigures:
        return infrastructure.measure_postgresql()


def _sqlite_pragmas(dbapi_connection: SQLiteConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the web process read while the worker writes; the busy timeout waits out locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SQLite:
    name = "sqlite"
    group_commit = False

    def insert(self, table: type[StatBucket] | Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def engine_options(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": 30}}

    def ingest_engine_options(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": 30}}

    def prepare(self, engine: Engine) -> None:
        sa_event.listen(engine, "connect", _sqlite_pragmas)

    def claim_events(
        self, event_ids: list[uuid.UUID], worker_id: str
    ) -> list[transitions.ClaimedEvent]:
        return transitions.claim_events_portable(event_ids, worker_id)

    def complete_events(
        self, done: list[tuple[transitions.ClaimedEvent, str]]
    ) -> dict[uuid.UUID, float]:
        return transitions.complete_events_portable(done)

    def finish_attempt(self, end: transitions.AttemptEnd) -> bool:
        return transitions.finish_attempt_portable(end)

    def payload_equals(self, path: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        # SQLite's JSON functions by path, with the JSON type so that "1" does not match 1.
        json_path = "$" + "".join(f'."{key}"' for key in path)
        kind = func.json_type(Event.payload, json_path)
        if value is None or isinstance(value, bool):
            return kind == {None: "null", True: "true", False: "false"}[value]
        field = func.json_extract(Event.payload, json_path)
        if isinstance(value, str):
            return and_(kind == "text", field == value)
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            # SQLite's integers are 64-bit: it reads a larger one in a payload as a real.
            value = float(value)
        return and_(kind.in_(("integer", "real")), field == value)

    def measure(self) -> infrastructure.DatabaseFigures:
        return infrastructure.measure_sqlite()


# --- state the processes share --------------------------------------------------------------


class SharedState(Protocol):
    """Leases and sets every process of the deployment sees (Redis), or this process alone."""

    def hold(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take `key` for `owner` for ttl_ms, or extend it if owner has it; True while held."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give `key` up if `owner` holds it, so another can take it at once."""
        ...

    def add_members(self, key: str, members: list[str], ttl_ms: int) -> None:
        """Add to the set at `key`; a set nobody adds to for ttl_ms goes away."""
        ...

    def members(self, key: str) -> list[str]: ...

    def remove_members(self, key: str, members: list[str]) -> None: ...


class RedisState:
    """Shared state in Redis: each step is one round trip (a script where it must be atomic)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._hold = client.register_script(_HOLD_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def hold(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._hold(keys=[key], args=[owner, ttl_ms]))

    def release(self, key: str, owner: str) -> None:
        self._release(keys=[key], args=[owner])

    def add_members(self, key: str, members: list[str], ttl_ms: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, *members)
        pipe.pexpire(key, ttl_ms)
        pipe.execute()

    def members(self, key: str) -> list[str]:
        stored: set[bytes] = self.client.smembers(key)  # type: ignore[assignment]
        return sorted(member.decode() for member in stored)

    def remove_members(self, key: str, members: list[str]) -> None:
        self.client.srem(key, *members)


class LocalState:
    """Shared state without Redis: this process's memory, which no other process sees.

    The embedded default runs one web process, so its dashboard lease and viewers need no
    more; each worker process then runs its own recovery pass, as none can see another's lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}  # key -> (owner, monotonic expiry)
        self._sets: dict[str, set[str]] = {}

    def hold(self, key: str, owner: str, ttl_ms: int) -> bool:
        now = time.monotonic()
        with self._lock:
            holder, expires = self._held.get(key, (owner, now))
            if holder != owner and expires > now:
                return False
            self._held[key] = (owner, now + ttl_ms / 1000)
            return True

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            if self._held.get(key, ("", 0.0))[0] == owner:
                del self._held[key]

    def add_members(self, key: str, members: list[str], ttl_ms: int) -> None:
        with self._lock:
            self._sets.setdefault(key, set()).update(members)

    def members(self, key: str) -> list[str]:
        with self._lock:
            return sorted(self._sets.get(key, ()))

    def remove_members(self, key: str, members: list[str]) -> None:
        with self._lock:
            self._sets.get(key, set()).difference_update(members)


# --- the broker -----------------------------------------------------------------------------


class Broker(Protocol):
    """Huey's storage, the live counters and the shared state of one deployment."""

    @property
    def huey(self) -> Any:  # huey.Huey: huey is untyped
        ...

    @property
    def counters(self) -> Counters: ...

    @property
    def shared(self) -> SharedState: ...

    def send(self, messages: list[bytes], counts: Mapping[str, int]) -> None:
        """Queue serialized task messages and count `counts`; raises if the queue is down."""
        ...

    def take(self, limit: int) -> list[bytes]:
        """Up to `limit` waiting messages, removed from the queue ([] where unsupported)."""
        ...

    def ping(self) -> None:
        """Raise if the queue cannot be reached."""
        ...

    def measure(self) -> infrastructure.RedisFigures | None:
        """Redis's memory and clients for the infrastructure panel (None: there is no Redis)."""
        ...


class RedisBroker:
    """Huey on Redis; counters in Redis; messages and counters go out in one round trip."""

    def __init__(self, url: str) -> None:
        pool = redis.ConnectionPool.from_url(url, **REDIS_OPTIONS)
        self.huey = RedisHuey(QUEUE_NAME, results=False, connection_pool=pool)
        self.client: redis.Redis = self.huey.storage.conn
        self.counters = RedisCounters(self.client)
        self.shared = RedisState(self.client)

    def send(self, messages: list[bytes], counts: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        if messages:
            pipe.lpush(self.huey.storage.queue_key, *messages)
        self.counters.add_to(pipe, counts)
        pipe.execute()

    def take(self, limit: int) -> list[bytes]:
        taken: list[bytes] | None = self.client.rpop(  # type: ignore[assignment]
            self.huey.storage.queue_key, limit
        )
        return taken or []

    def ping(self) -> None:
        self.client.ping()

    def measure(self) -> infrastructure.RedisFigures:
        return infrastructure.measure_redis(self.client)


class SqliteBroker:
    """Huey's SQLite queue (one machine, no server); counters in the database."""

    def __init__(self, path: str, database: Database) -> None:
        self.huey = SqliteHuey(QUEUE_NAME, results=False, filename=path)
        self.counters = DatabaseCounters(database.insert)
        self.shared = LocalState()

    def send(self, messages: list[bytes], counts: Mapping[str, int]) -> None:
        for message in messages:
            self.huey.storage.enqueue(message)
        self.counters.record(counts)

    def take(self, limit: int) -> list[bytes]:
        return []  # one message per task: its storage has no cheap way to take several

    def ping(self) -> None:
        self.huey.pending_count()

    def measure(self) -> None:
        return None


# --- the choice -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    database: Database
    broker: Broker


def choose_backend(settings: Settings) -> Backend:
    """The database and the broker these settings name; made once, in create_app."""
    database: Database = (
        PostgreSQL() if settings.database_url.startswith("postgresql") else SQLite()
    )
    broker: Broker = (
        RedisBroker(settings.redis_url)
        if settings.redis_url
        else SqliteBroker(settings.queue_path, database)
    )
    return Backend(database, broker)


def backend_of(app: Flask) -> Backend:
    backend: Backend = app.extensions[BACKEND_KEY]
    return backend


def current_backend() -> Backend:
    """The backend of the app in context (e.g. for ingest: `.database.group_commit`)."""
    return backend_of(current_app)
