"""Group commit: concurrent ingest requests of one process share one INSERT and one commit.

Each request hands its row to the process's `GroupCommitter` and waits. The first request to
arrive while no flush is running leads: it writes every row waiting at that moment with one
multi-row `INSERT … RETURNING id` on an autocommit connection (one round trip and one fsync'd
commit for the group), queues the inserted ids with one pipelined Redis call, and wakes the
others. Rows that arrived meanwhile form the next group, led by the first of them, so no request
writes more than one group. Nobody waits for a timer: without concurrency a group is one row.

Each request answers only after its own row is committed; if the INSERT fails, every request of
that group (and only of that group) gets the error, i.e. a 503, and none of its rows exists.

The INSERT checks each row's session (user exists, token generation current, not logged out) as
the single-row statement does, so revocation still costs nothing extra. PostgreSQL only: the
embedded SQLite mode keeps the single-row statement.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
from sqlalchemy import Engine

# One statement per group. Each column travels as one text parameter that PostgreSQL splits
# (ids, users, types, times, generations and sessions by commas, which they cannot hold;
# payloads, keys and request ids by newlines, which compact JSON and printable keys and ids
# cannot hold; '' is a missing key or id): a third of execute_values' client CPU, which quoted
# every value of every row.
# The rows are joined with their users to check each session.
INSERT_GROUP = """
INSERT INTO events (id, user_id, type, payload, status, attempts, replayed_attempts,
                    idempotency_key, created_at, next_attempt_at, request_id)
SELECT v.id, v.user_id, v.type, v.payload, 'PENDING', 0, 0, v.idempotency_key, v.created_at,
       v.created_at, v.request_id
FROM unnest(string_to_array(%(ids)s, ',')::uuid[],
            string_to_array(%(users)s, ',')::uuid[],
            string_to_array(%(types)s, ','),
            string_to_array(%(payloads)s, E'\\n')::jsonb[],
            string_to_array(%(keys)s, E'\\n', ''),
            string_to_array(%(times)s, ',')::timestamptz[],
            string_to_array(%(generations)s, ',')::int[],
            string_to_array(%(sessions)s, ','),
            string_to_array(%(request_ids)s, E'\\n', '')
     ) AS v(id, user_id, type, payload, idempotency_key, created_at, generation, session_id,
            request_id)
JOIN users u ON u.id = v.user_id AND u.token_generation = v.generation
WHERE NOT EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = v.session_id)
ORDER BY v.user_id, v.idempotency_key  -- one lock order for keys, so groups never deadlock
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING id
"""
MAX_GROUP = 500  # rows per statement; more wait for the next one


def group_parameters(group: Sequence[Pending]) -> dict[str, str]:
    """The group's rows as INSERT_GROUP's column parameters."""
    return {
        "ids": ",".join([row.id for row in group]),
        "users": ",".join([str(row.user_id) for row in group]),
        "types": ",".join([row.type for row in group]),
        "payloads": b"\n".join([row.payload_json for row in group]).decode(),
        "keys": "\n".join([row.idempotency_key or "" for row in group]),
        "times": ",".join([row.created_at.isoformat() for row in group]),
        "generations": ",".join([str(row.generation) for row in group]),
        "sessions": ",".join([row.session_id for row in group]),
        "request_ids": "\n".join([row.request_id or "" for row in group]),
    }


@dataclass
class Pending:
    """One request's row, and what became of it once its group was flushed."""

    id: str
    user_id: uuid.UUID
    type: str
    payload_json: bytes  # validated: storable, compact
    idempotency_key: str | None
    created_at: datetime
    generation: int
    session_id: str
    request_id: str | None = None  # the X-Request-ID of the request the row comes from
    inserted: bool = False
    error: BaseException | None = None
    state: str = "waiting"  # -> "lead" (write the next group) -> "done"
    # Looked up per row, not bound at import: with `gunicorn --preload` this module is imported
    # before gevent patches threading, and an unpatched Event would block the whole worker.
    wake: threading.Event = field(default_factory=lambda: threading.Event())


class GroupCommitter:
    """Writes the rows of concurrent requests together; one per process (see ingest.py)."""

    def __init__(self, engine: Engine, enqueue: Callable[[list[Pending]], object]):
        self.engine = engine
        self.enqueue = enqueue
        self._lock = threading.Lock()
        self._waiting: list[Pending] = []
        self._flushing = False

    def submit(self, row: Pending) -> Pending:
        """Wait until the row's group is written; the row says whether it was inserted."""
        with self._lock:
            self._waiting.append(row)
            if not self._flushing:
                self._flushing = True
                row.state = "lead"
                row.wake.set()
        while True:
            row.wake.wait()
            if row.state == "done":
                break
            row.wake.clear()  # our turn to lead: our row is first in line, so in this group
            self._write_next_group()
        if row.error is not None:
            raise row.error
        return row

    def _write_next_group(self) -> None:
        with self._lock:
            group = self._waiting[:MAX_GROUP]
            del self._waiting[:MAX_GROUP]
        try:
            try:
                self._flush(group)
            except (psycopg2.DataError, psycopg2.IntegrityError, ValueError):
                if len(group) == 1:
                    raise
                # One row PostgreSQL refuses must not fail its neighbours: write them one by one.
                for row in group:
                    try:
                        self._flush([row])
                    except Exception as exc:
                        row.error = exc
        except BaseException as exc:  # every request of this group learns it failed
            for row in group:
                row.error = exc
        finally:
            with self._lock:
                for row in group:
                    row.state = "done"
                    row.wake.set()
                if self._waiting:  # hand over to the first request of the next group
                    successor = self._waiting[0]
                    successor.state = "lead"
                    successor.wake.set()
                else:
                    self._flushing = False

    def _flush(self, group: Sequence[Pending]) -> None:
        connection = self.engine.raw_connection()  # autocommit: committed when it returns
        try:
            # psycopg2's cursor is a context manager; SQLAlchemy types it as a bare DBAPI cursor.
            with connection.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(INSERT_GROUP, group_parameters(group))
                returned = cursor.fetchall()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # PostgreSQL went away (a restart?): the pool's other connections are as dead as
            # this one. Start a fresh pool rather than fail one group per stale connection.
            connection.invalidate()
            self.engine.dispose(close=False)
            raise
        finally:
            connection.close()  # back to the pool (a no-op once invalidated)
        inserted = {str(event_id) for (event_id,) in returned}
        rows = []
        for row in group:
            row.inserted = str(row.id) in inserted
            if row.inserted:
                rows.append(row)
        # The rows are committed: losing the queue message only delays them (recovery).
        if rows:
            self.enqueue(rows)
