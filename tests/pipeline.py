"""Shared by the pipeline tests: ingest over HTTP, read events and attempts, count effects."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import requests
from sqlalchemy import event as sa_event
from sqlalchemy import select

from eventflow.extensions import db
from eventflow.models import Event, EventAttempt
from tests.processes import wait_for

TERMINAL = ("PROCESSED", "FAILED")
# gunicorn binds before its workers have imported the app, so conftest's first /health probe
# (1 s read timeout, ReadTimeout not caught) can fail on a busy machine. With --preload the
# master imports the app before binding, so the first probe is answered at once.
PRELOAD = "--preload"


def ingest(api, headers: dict, event_type: str, payload: dict) -> str:
    """POST one event through the API, which must accept it (202); returns its id.

    `api` is a gunicorn base URL (real HTTP) or the app's test client (the same app in-process).
    """
    body = {"type": event_type, "payload": payload}
    if isinstance(api, str):
        response = requests.post(f"{api}/api/v1/events", json=body, headers=headers, timeout=10)
        status, data = response.status_code, response.json()
    else:
        response = api.post("/api/v1/events", json=body, headers=headers)
        status, data = response.status_code, response.get_json()
    assert status == 202, data
    return data["eventId"]


def api_get(api, headers: dict, path: str) -> dict:
    """GET an /api/v1 path that must answer 200; returns the JSON body."""
    if isinstance(api, str):
        response = requests.get(f"{api}/api/v1{path}", headers=headers, timeout=10)
        status, data = response.status_code, response.json()
    else:
        response = api.get(f"/api/v1{path}", headers=headers)
        status, data = response.status_code, response.get_json()
    assert status == 200, data
    return data


def read_effects(path: Path) -> dict[str, list[int]]:
    """Event id -> the attempt numbers its handler ran with, one per recorded effect."""
    effects: dict[str, list[int]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            event_id, attempt = line.split()
            effects[event_id].append(int(attempt))
    return dict(effects)


def events_by_id(app, ids) -> dict[str, dict]:
    """A snapshot of the events' rows, keyed by id string."""
    keys = [uuid.UUID(str(i)) for i in ids]
    with app.app_context():
        rows = db.session.scalars(select(Event).where(Event.id.in_(keys))).all()
        return {
            str(e.id): {
                "status": e.status,
                "attempts": e.attempts,
                "result": e.result,
                "last_error": e.last_error,
                "locked_by": e.locked_by,
                "type": e.type,
            }
            for e in rows
        }


def statuses(app, ids) -> dict[str, str]:
    return {i: e["status"] for i, e in events_by_id(app, ids).items()}


def attempt_rows(app, event_id) -> list[dict]:
    """The event's event_attempts rows in attempt order."""
    with app.app_context():
        rows = db.session.scalars(
            select(EventAttempt)
            .where(EventAttempt.event_id == uuid.UUID(str(event_id)))
            .order_by(EventAttempt.number)
        ).all()
        return [
            {
                "number": a.number,
                "outcome": a.outcome,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "error": a.error,
                "traceback": a.traceback,
                "worker": a.worker,
            }
            for a in rows
        ]


def wait_terminal(app, ids, timeout: float = 30.0) -> dict[str, str]:
    """Wait until every event is PROCESSED or FAILED; return their statuses."""

    def done():
        current = statuses(app, ids)
        return current if all(current.get(str(i)) in TERMINAL for i in ids) else None

    return wait_for(done, timeout=timeout, message=f"{len(ids)} event(s) to be terminal")


def query_plans(app, call: Callable[[], object]) -> list[str]:
    """Run call() in an app context; return the EXPLAIN of each statement it sent on `events`."""
    sent: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        if "events" in statement:
            sent.append((statement, parameters))

    with app.app_context():
        sa_event.listen(db.engine, "before_cursor_execute", record)
        try:
            call()
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", record)
        raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        plans = []
        for statement, parameters in sent:
            cursor.execute(f"EXPLAIN {statement}", parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
        return plans
    finally:
        raw.rollback()
        raw.close()
