"""Ingest: validate an event and commit it, then queue it. The API's hot path.

`create_event` commits one event with one statement on an autocommit connection (one round
trip); the statement also checks the caller's session (see tokens.py), so revocation costs
ingest nothing extra.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import bindparam, cast, exists, insert, select
from sqlalchemy.exc import IntegrityError

from .errors import ApiError
from .events import MAX_IDEMPOTENCY_KEY, TYPE_PATTERN
from .extensions import ingest_engine
from .models import Event, RevokedToken, Status, User, utcnow
from .tasks.queue import get_queue
from .tokens import Credentials, check_session


def _check_no_nul(value: Any, where: str) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb: refuse it up front."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ApiError(400, "invalid_payload", f"{where} contains a NUL (\\u0000) character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_no_nul(key, where)
            _check_no_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_no_nul(item, where)


def validate_event(body: Any) -> tuple[str, dict]:
    """Return (type, payload) from a request body, or a 400 naming the field at fault."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - {"type", "payload"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    event_type = body.get("type")
    if not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type):
        raise ApiError(400, "invalid_type", "type must be 1-64 characters of A-Z a-z 0-9 _ . -")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "payload is required and must be a JSON object")
    _check_no_nul(payload, "payload")
    return event_type, payload


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters"
        )
    return key


_EVENTS = Event.__table__
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
)
_EVENT_ID_FOR_KEY = select(_EVENTS.c.id).where(
    _EVENTS.c.user_id == bindparam("user_id"),
    _EVENTS.c.idempotency_key == bindparam("idempotency_key"),
)


@functools.cache
def _guarded_insert(dialect: str):
    """INSERT … SELECT <row> WHERE <the session is live> RETURNING id, built once per dialect.

    The session check (user exists, token generation current, session not logged out) rides in
    the insert itself, so ingest honours revocation at no extra round trip. A plain INSERT, not
    the dialects' ON CONFLICT variant: SQLAlchemy cannot cache the compiled form of that one with
    a SELECT, and compiling it on every request cost ~1 ms (BENCHMARKS.md). A repeated
    Idempotency-Key is the unique index's IntegrityError instead; a racing repeat waits for the
    first row's commit either way.
    """

    def value(name: str):
        column = _EVENTS.c[name]
        param = bindparam(name, type_=column.type)
        # PostgreSQL needs the types spelt out in a SELECT list; SQLite must not cast (its
        # CAST AS JSON would turn the text into a number).
        return cast(param, column.type) if dialect == "postgresql" else param

    live_session = exists().where(
        _USERS.c.id == bindparam("session_user_id", type_=_USERS.c.id.type),
        _USERS.c.token_generation == bindparam("session_generation"),
    ) & ~exists().where(_REVOKED.c.jti == bindparam("session_id"))
    statement = insert(_EVENTS).from_select(
        list(_ROW_COLUMNS), select(*(value(name) for name in _ROW_COLUMNS)).where(live_session)
    )
    return statement.returning(_EVENTS.c.id)


def create_event(
    credentials: Credentials,
    event_type: str,
    payload: dict,
    idempotency_key: str | None = None,
) -> tuple[uuid.UUID, bool]:
    """Commit and queue a new event; return (id, created). A repeated key returns the same id."""
    now = utcnow()
    row = dict(
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
        session_user_id=credentials.user_id,
        session_generation=credentials.generation,
        session_id=credentials.session_id,
    )
    existing = None
    # The hot path: one prebuilt statement on an autocommit connection is one round trip
    # (no BEGIN/COMMIT of its own), and the row is committed when it returns.
    with ingest_engine().connect() as conn:
        try:
            inserted = conn.execute(_guarded_insert(conn.dialect.name), row).first()
        except IntegrityError:
            # The key was used before (perhaps by a request racing this one, whose commit the
            # unique index waited for): that event wins, if the session is still live.
            inserted = None
            if idempotency_key is not None:
                existing = conn.execute(
                    _EVENT_ID_FOR_KEY,
                    {"user_id": credentials.user_id, "idempotency_key": idempotency_key},
                ).scalar()
    if inserted is None:
        check_session(credentials)  # says why (401) when the session is what stopped the insert
        if existing is None:
            raise ApiError(401, "token_revoked", "the token has been revoked; log in again")
        return existing, False
    event_id = row["id"]
    # The row is committed: from here on, losing the queue message only delays the event.
    get_queue().enqueue([event_id], ingested=1)
    return event_id, True
