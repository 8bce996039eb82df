"""Ingest: validate an event and commit it, then queue it. The API's hot path.

On PostgreSQL `create_event` hands the row to the process's group committer (group_commit.py):
concurrent requests share one INSERT, one commit and one enqueue. On SQLite it commits one
guarded statement on an autocommit connection. Either statement also checks the caller's session
(see tokens.py), so revocation costs ingest nothing extra.

`create_events` (POST /events/batch) commits up to 1,000 events in one transaction with one
statement that makes the same session check, then queues them with one pipelined call. Single
events and batch events obey the same rules: the schemas' (eventflow/schemas/requests.py), plus
the storage check made on the payload's JSON text (`_storable_json`).

Every event stores the X-Request-ID of the request that created it (`logs.current_request_id`,
the same for all events of a batch): the worker's log line of each attempt carries it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from typing import Any, NamedTuple, cast

import orjson
from flask import Flask, current_app
from sqlalchemy import Connection, Table, bindparam, exists, insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import ReturningInsert

from .backend import backend_of
from .config import Settings
from .errors import ApiError
from .extensions import INGEST_ENGINE_KEY, db, ingest_engine
from .group_commit import GroupCommitter, Pending
from .logs import current_request_id
from .models import Event, RevokedToken, Status, User, utcnow
from .schemas.parsing import validate
from .schemas.requests import (
    MAX_BATCH_EVENTS,
    EditedPayload,
    IngestHeaders,
    NewEvent,
    NewEvents,
)
from .tasks.queue import get_queue
from .tokens import Credentials, check_session

UNSTORABLE_RULE = "contains a NUL (\\u0000) or unpaired surrogate character, which cannot be stored"
# PostgreSQL stores neither U+0000 nor a lone UTF-16 surrogate (which a JSON escape such as
# \ud800 produces) in text or jsonb: refuse them up front rather than fail in the INSERT.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class _Invalid(Exception):
    """An event breaks a rule: its error code, the field at fault (None: the event), and why."""

    def __init__(self, code: str, field: str | None, reason: str):
        super().__init__(reason)
        self.code = code
        self.field = field
        self.reason = reason


def _unstorable(value: Any) -> bool:
    """True if a string anywhere in the value, object keys included, cannot be stored."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        for key, item in value.items():
            if _unstorable(key) or _unstorable(item):
                return True
    elif isinstance(value, list):
        for item in value:
            if _unstorable(item):
                return True
    return False


def validate_event(body: Any) -> tuple[str, dict[str, Any], bytes]:
    """(type, payload, the payload's JSON text) from a request body, or a 400 naming the field."""
    event = validate(NewEvent, body, "body")
    try:
        text = _storable_json(event.payload)  # also the check that it can be stored
    except _Invalid as exc:
        raise ApiError(400, exc.code, f"{exc.field} {exc.reason}") from None
    return event.type, event.payload, text


def validate_edited_payload(body: Any) -> dict[str, Any] | None:
    """The corrected payload of an edit-and-replay body, checked as ingest checks a payload."""
    edited = validate(EditedPayload, body, "body")
    if edited.payload is not None:
        try:
            _storable_json(edited.payload)
        except _Invalid as exc:
            raise ApiError(400, exc.code, f"{exc.field} {exc.reason}") from None
    return edited.payload


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    headers = validate(IngestHeaders, {"Idempotency-Key": key}, "header")
    return headers.idempotency_key


# Declarative classes type __table__ as a FromClause; a mapped class's is its Table.
_EVENTS = cast(Table, Event.__table__)
_USERS = User.__table__
_REVOKED = RevokedToken.__table__
_ROW_COLUMNS = (
    "id",
    "user_id",
    "type",
    "payload",
    "status",
    "attempts",
    "replayed_attempts",
    "idempotency_key",
    "created_at",
    "next_attempt_at",
    "request_id",
)
_EVENT_ID_FOR_KEY = select(_EVENTS.c.id).where(
    _EVENTS.c.user_id == bindparam("user_id"),
    _EVENTS.c.idempotency_key == bindparam("idempotency_key"),
)


@functools.cache
def _guarded_insert() -> ReturningInsert[Any]:
    """The embedded path's INSERT … SELECT <row> WHERE <the session is live> RETURNING id.

    Built once. The session check (user exists, token generation current, session not logged
    out) rides in the insert itself, as in the group commit's statement on PostgreSQL. A plain
    INSERT rather than ON CONFLICT: a repeated Idempotency-Key is the unique index's
    IntegrityError. No casts: SQLite's CAST AS JSON would turn the text into a number.
    """
    live_session = exists().where(
        _USERS.c.id == bindparam("session_user_id", type_=_USERS.c.id.type),
        _USERS.c.token_generation == bindparam("session_generation"),
    ) & ~exists().where(_REVOKED.c.jti == bindparam("session_id"))
    values = (bindparam(name, type_=_EVENTS.c[name].type) for name in _ROW_COLUMNS)
    statement = insert(_EVENTS).from_select(list(_ROW_COLUMNS), select(*values).where(live_session))
    return statement.returning(_EVENTS.c.id)


COMMITTER_KEY = "eventflow.group_commit"
BATCH_INSERT_KEY = "eventflow.batch_insert"


def init_ingest(app: Flask, settings: Settings) -> None:
    """Pick the backend's statements once: on PostgreSQL, concurrent requests of a process share
    their INSERT (group_commit.py) and a batch is one column-wise INSERT; on SQLite, one guarded
    INSERT per row."""
    if backend_of(app).database.group_commit:
        queue = app.extensions["eventflow.queue"]
        app.extensions[COMMITTER_KEY] = GroupCommitter(
            app.extensions[INGEST_ENGINE_KEY],
            lambda rows: queue.enqueue(
                [row.id for row in rows], ingested=len(rows), event_types=[r.type for r in rows]
            ),
        )
        app.extensions[BATCH_INSERT_KEY] = _insert_postgresql
    else:
        app.extensions[BATCH_INSERT_KEY] = _insert_embedded


def create_event(
    credentials: Credentials,
    event_type: str,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
    payload_json: bytes | None = None,
) -> tuple[uuid.UUID | str, bool]:
    """Commit and queue a new event; return (id, created). A repeated key returns the same id.

    `payload_json` is the payload's JSON text from validate_event (computed here if not given).
    """
    committer: GroupCommitter | None = current_app.extensions.get(COMMITTER_KEY)
    if committer is None:
        return _create_one(credentials, event_type, payload, idempotency_key)
    row = committer.submit(
        Pending(
            id=new_event_id(),
            user_id=credentials.user_id,
            type=event_type,
            payload_json=payload_json if payload_json is not None else _storable_json(payload),
            idempotency_key=idempotency_key,
            created_at=utcnow(),
            generation=credentials.generation,
            session_id=credentials.session_id,
            request_id=current_request_id(),
        )
    )
    if row.inserted:  # committed and queued with its group
        return row.id, True
    return _earlier_event(credentials, idempotency_key), False


def _earlier_event(credentials: Credentials, idempotency_key: str | None) -> uuid.UUID:
    """Why a row was not inserted: a dead session (401), or the key's earlier event."""
    check_session(credentials)
    existing: uuid.UUID | None = None
    if idempotency_key is not None:
        with ingest_engine().connect() as conn:
            existing = conn.execute(
                _EVENT_ID_FOR_KEY,
                {"user_id": credentials.user_id, "idempotency_key": idempotency_key},
            ).scalar()
    if existing is None:
        raise ApiError(401, "token_revoked", "the token has been revoked; log in again")
    return existing


def _create_one(
    credentials: Credentials,
    event_type: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
) -> tuple[uuid.UUID, bool]:
    """The embedded (SQLite) path: one guarded INSERT, committed when it returns."""
    now = utcnow()
    row: dict[str, Any] = dict(
        id=uuid.uuid4(),
        user_id=credentials.user_id,
        type=event_type,
        payload=payload,
        status=Status.PENDING.value,
        attempts=0,
        replayed_attempts=0,
        idempotency_key=idempotency_key,
        created_at=now,
        next_attempt_at=now,
        request_id=current_request_id(),
        session_user_id=credentials.user_id,
        session_generation=credentials.generation,
        session_id=credentials.session_id,
    )
    with ingest_engine().connect() as conn:
        try:
            inserted = conn.execute(_guarded_insert(), row).first()
        except IntegrityError:  # the key was used before, or the user is gone
            inserted = None
    if inserted is None:
        return _earlier_event(credentials, idempotency_key), False
    get_queue().enqueue([row["id"]], ingested=1, event_types=[event_type])
    return row["id"], True


# --- batches: POST /events/batch ---------------------------------------------------------------


class BatchEvent(NamedTuple):
    """One validated event of a batch, with its payload already encoded as JSON text."""

    type: str
    payload: dict[str, Any]
    idempotency_key: str | None
    payload_json: bytes


class BatchOutcome(NamedTuple):
    """What a batch did: (event id, created) per event in request order, and the counts."""

    items: list[tuple[str, bool]]
    accepted: int
    duplicates: int


def batch_size(body: Any) -> int:
    """The events a batch body holds, as the ingest rate limit counts them (1 if not a batch)."""
    events = body.get("events") if isinstance(body, dict) else None
    if isinstance(events, list) and 0 < len(events) <= MAX_BATCH_EVENTS:
        return len(events)
    return 1  # the view answers it with a 400


def validate_batch(body: Any) -> list[BatchEvent]:
    """The events of a batch body, checked as single events are; a 400 names the first bad one."""
    batch = []
    for index, event in enumerate(validate(NewEvents, body, "body").events):
        try:
            text = _storable_json(event.payload)
        except _Invalid as exc:
            raise ApiError(400, exc.code, f"events[{index}].payload: {exc.reason}") from None
        batch.append(BatchEvent(event.type, event.payload, event.idempotency_key, text))
    return batch


def _storable_json(payload: dict[str, Any]) -> bytes:
    """The payload as compact JSON text, or _Invalid if it holds what cannot be stored.

    orjson takes a third of json.dumps's time here, or less. It refuses lone surrogates and
    integers beyond 64 bits and writes U+0000 as \\u0000: only such payloads take the slow walk.
    """
    try:
        text: bytes | None = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        text = None
    if text is None or b"\\u0000" in text:
        if _unstorable(payload):
            raise _Invalid("invalid_payload", "payload", UNSTORABLE_RULE)
        if text is None:  # e.g. an integer beyond 64 bits, which jsonb keeps exactly
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return text


def new_event_id() -> str:
    """One random (version 4) UUID as text, the fast way (see _new_ids)."""
    return _new_ids(1)[0]


def _new_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as text; ~4x faster than str(uuid.uuid4()) each."""
    hexes = os.urandom(16 * count).hex()
    return [
        f"{hexes[i : i + 8]}-{hexes[i + 8 : i + 12]}-4{hexes[i + 13 : i + 16]}-"
        f"{'89ab'[int(hexes[i + 16], 16) & 3]}{hexes[i + 17 : i + 20]}-{hexes[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


# The whole batch in one statement and one round trip. Each column travels as one text
# parameter split by PostgreSQL (ids and types by commas, which they cannot contain; payloads
# and keys by newlines, which compact JSON and printable keys cannot contain; '' is a missing
# key, as a key has 1+ characters): as fast as COPY here, and, unlike COPY, usable on the
# cooperative (gevent) psycopg2 connections of the web workers. The session check is the
# single-event statement's. ORDER BY key makes concurrent batches take their keys' index
# entries in one order, so batches sharing keys wait for each other instead of deadlocking.
_INSERT_BATCH = """
INSERT INTO events (id, user_id, type, payload, status, attempts, replayed_attempts,
                    idempotency_key, created_at, next_attempt_at, request_id)
SELECT b.id, %(user_id)s::uuid, b.type, b.payload, %(status)s, 0, 0, b.key, %(now)s, %(now)s,
       %(request_id)s
FROM unnest(string_to_array(%(ids)s, ',')::uuid[],
            string_to_array(%(types)s, ','),
            string_to_array(%(payloads)s, E'\\n')::jsonb[],
            string_to_array(%(keys)s, E'\\n', '')) AS b(id, type, payload, key)
WHERE EXISTS (SELECT FROM users WHERE id = %(user_id)s::uuid
                                  AND token_generation = %(generation)s)
  AND NOT EXISTS (SELECT FROM revoked_tokens WHERE jti = %(session_id)s)
ORDER BY b.key
ON CONFLICT (user_id, idempotency_key) DO NOTHING
"""
_STORED_KEYS = select(_EVENTS.c.idempotency_key, _EVENTS.c.id).where(
    _EVENTS.c.user_id == bindparam("user_id"),
    _EVENTS.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)


def create_events(credentials: Credentials, batch: list[BatchEvent]) -> BatchOutcome:
    """Commit a batch in one transaction, then queue it with one pipelined call.

    An idempotency key already stored for the user, or used earlier in the batch, makes that
    event a duplicate carrying the original's id. All rows commit together or none does (a
    dead session: 401; the database down: 503).
    """
    ids = _new_ids(len(batch))
    first: dict[str, int] = {}  # key -> index of the event that uses it first
    fresh: list[int] = []  # the events to insert: no key, or a key's first use
    for index, event in enumerate(batch):
        key = event.idempotency_key
        if key is not None:
            if key in first:
                continue
            first[key] = index
        fresh.append(index)
    originals: dict[str, str] = {}  # key -> id of the event stored before this batch
    with db.engine.begin() as conn:
        insert_batch = current_app.extensions[BATCH_INSERT_KEY]
        inserted = insert_batch(conn, credentials, batch, ids, fresh)
        if inserted < len(fresh):
            stored = conn.execute(
                _STORED_KEYS, {"user_id": credentials.user_id, "keys": list(first)}
            )
            for key, event_id in stored:
                if str(event_id) != ids[first[key]]:  # not the row this batch just added
                    originals[key] = str(event_id)
            if not inserted or inserted + len(originals) < len(fresh):
                check_session(credentials)  # says why (401) if the session stopped the insert
            if inserted + len(originals) < len(fresh):
                # A key's earlier event vanished (deleted) between the INSERT and the lookup.
                raise ApiError(
                    409, "idempotency_conflict", "an event of this batch changed; send it again"
                )
    items = []
    for index, event in enumerate(batch):
        key = event.idempotency_key
        if key is None:
            items.append((ids[index], True))
        elif key in originals:
            items.append((originals[key], False))
        else:
            items.append((ids[first[key]], first[key] == index))
    queued = [(event_id, batch[i].type) for i, (event_id, created) in enumerate(items) if created]
    # The rows are committed: from here on, losing the queue messages only delays the events.
    if queued:
        get_queue().enqueue(
            [event_id for event_id, _ in queued],
            ingested=len(queued),
            event_types=[event_type for _, event_type in queued],
        )
    return BatchOutcome(items, len(queued), len(items) - len(queued))


def _insert_postgresql(
    conn: Connection,
    credentials: Credentials,
    batch: list[BatchEvent],
    ids: list[str],
    fresh: list[int],
) -> int:
    """Insert the fresh events with one statement in the caller's transaction; the rows added."""
    params = {
        "user_id": str(credentials.user_id),
        "generation": credentials.generation,
        "session_id": credentials.session_id,
        "status": Status.PENDING.value,
        "now": utcnow(),
        "request_id": current_request_id(),
        "ids": ",".join([ids[i] for i in fresh]),
        "types": ",".join([batch[i].type for i in fresh]),
        "payloads": b"\n".join([batch[i].payload_json for i in fresh]).decode(),
        "keys": "\n".join([batch[i].idempotency_key or "" for i in fresh]),
    }
    # Hand-written SQL on the raw DBAPI cursor: no statement compiling or result processing.
    cursor = conn.connection.cursor()
    try:
        cursor.execute(_INSERT_BATCH, params)
        return cursor.rowcount
    finally:
        cursor.close()


def _insert_embedded(
    conn: Connection,
    credentials: Credentials,
    batch: list[BatchEvent],
    ids: list[str],
    fresh: list[int],
) -> int:
    """SQLite: check the session, then one executemany in the caller's transaction."""
    check_session(credentials)
    now = utcnow()
    rows = [
        dict(
            id=uuid.UUID(ids[i]),
            user_id=credentials.user_id,
            type=batch[i].type,
            payload=batch[i].payload,
            status=Status.PENDING.value,
            attempts=0,
            replayed_attempts=0,
            idempotency_key=batch[i].idempotency_key,
            created_at=now,
            next_attempt_at=now,
            request_id=current_request_id(),
        )
        for i in fresh
    ]
    statement = sqlite_insert(_EVENTS).on_conflict_do_nothing(
        index_elements=["user_id", "idempotency_key"]
    )
    return conn.execute(statement, rows).rowcount
