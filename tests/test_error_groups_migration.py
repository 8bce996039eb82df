"""Migration 0007 groups the failures recorded before it, on PostgreSQL and on SQLite.

A database at revision 0006 gets events whose attempts failed with real exceptions (their error
line and traceback stored as the worker stores them), then `flask db upgrade` runs for real.
Then the worker's own path (the embedded mode's statements on SQLite) fails an event with the
same error: it joins the group of its past.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from sqlalchemy import create_engine, insert, select

from eventflow import create_app, error_groups
from eventflow.extensions import db
from eventflow.models import (
    ErrorGroup,
    ErrorGroupHour,
    ErrorGroupType,
    Event,
    EventAttempt,
    GroupStatus,
    User,
    utcnow,
)
from eventflow.tasks.fingerprints import LOST, LOST_MESSAGE, fingerprint_exception
from eventflow.tasks.queue import processor_of
from tests import handlers
from tests.processes import flask_cli


def _recreate_postgresql(url: str) -> None:
    parts = urlsplit(url)
    conn = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    conn.autocommit = True
    with conn.cursor() as cur:
        name = parts.path.lstrip("/")
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def old_database(request, base_env, database_url, tmp_path):
    """(environment, URL) of an empty database of either kind."""
    if request.param == "postgresql":
        url = f"{database_url}_history"
        _recreate_postgresql(url)
        return {**base_env, "DATABASE_URL": url}, url
    # Empty, not missing: create_app lays these over this process's own environment.
    env = {
        **base_env,
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "EVENTFLOW_INSTANCE_PATH": str(tmp_path),
    }
    return env, f"sqlite:///{tmp_path / 'eventflow.sqlite3'}"


def failure(func, payload: dict) -> SimpleNamespace:
    """A real exception of a test handler, as the worker recorded it before error groups."""
    try:
        func(SimpleNamespace(id=uuid.uuid4(), attempt=1, payload=payload))
    except Exception as exc:
        return SimpleNamespace(
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
            fingerprint=fingerprint_exception(exc),
        )
    raise AssertionError("the handler did not fail")


def test_upgrade_groups_the_failed_attempts_already_recorded(old_database):
    env, url = old_database
    flask_cli(env, "db", "upgrade", "0006", check=True)
    now = utcnow()
    no_customer = [
        failure(handlers.no_customer, {"n": n, "customers": [name]})
        for n, name in ((1, "ACME"), (2, "Bob's"), (3, str(uuid.uuid4())))
    ]
    price = failure(handlers.bad_price, {"n": 4, "sku": "A-1"})
    user_id = uuid.uuid4()
    # event -> (type, status, [(outcome, failure or None, hours ago)])
    history = {
        "twice": (
            "TEST_NO_CUSTOMER",
            "FAILED",
            [("retry", no_customer[0], 3), ("failed", no_customer[1], 3)],
        ),
        "once": ("TEST_NO_CUSTOMER", "FAILED", [("failed", no_customer[2], 0)]),
        "recovered": ("TEST_BAD_PRICE", "PROCESSED", [("retry", price, 1), ("succeeded", None, 1)]),
        "orphaned": ("TEST_OK", "FAILED", [("lost", None, 0)]),
        "fine": ("TEST_OK", "PROCESSED", [("succeeded", None, 0)]),
    }
    ids = {name: uuid.uuid4() for name in history}
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(User.__table__).values(id=user_id, email="old@example.com", password_hash="x")
        )
        for name, (event_type, status, attempts) in history.items():
            conn.execute(
                insert(Event.__table__).values(
                    id=ids[name],
                    user_id=user_id,
                    type=event_type,
                    payload={},
                    status=status,
                    attempts=len(attempts),
                    created_at=now - timedelta(hours=4),
                )
            )
            for number, (outcome, failed, hours_ago) in enumerate(attempts, start=1):
                at = now - timedelta(hours=hours_ago)
                lost = LOST_MESSAGE if outcome == "lost" else None
                conn.execute(
                    insert(EventAttempt.__table__).values(
                        event_id=ids[name],
                        number=number,
                        outcome=outcome,
                        started_at=at,
                        finished_at=at,
                        error=failed.error if failed else lost,
                        traceback=failed.traceback if failed else None,
                    )
                )

    flask_cli(env, "db", "upgrade", check=True)

    with engine.connect() as conn:
        groups = {g.fingerprint: g for g in conn.execute(select(ErrorGroup.__table__))}
        # Messages that differ only in numbers and quoted values fell together.
        assert no_customer[0].fingerprint == no_customer[2].fingerprint
        lookup, bad_price = (
            groups[no_customer[0].fingerprint.digest],
            groups[price.fingerprint.digest],
        )
        lost = groups[LOST.digest]
        assert len(groups) == 3
        assert (lookup.exception, lookup.message, lookup.frame, lookup.count) == (
            "LookupError",
            "order <n> has no customer <str>",
            "tests.handlers:no_customer",
            3,
        )
        assert (bad_price.count, bad_price.frame) == (1, "tests.handlers:_check_price")
        assert (lost.exception, lost.count) == ("WorkerLost", 1)
        assert {g.status for g in groups.values()} == {"open"}
        assert abs(lookup.first_seen - (now - timedelta(hours=3))) < timedelta(seconds=1)
        assert abs(lookup.last_seen - now) < timedelta(seconds=1)

        latest = dict(conn.execute(select(Event.id, Event.error_group_id)).all())
        assert latest == {
            ids["twice"]: lookup.id,
            ids["once"]: lookup.id,
            ids["recovered"]: bad_price.id,  # its latest failure, though it succeeded after
            ids["orphaned"]: lost.id,
            ids["fine"]: None,
        }
        attempts = conn.execute(select(EventAttempt.outcome, EventAttempt.error_group_id)).all()
        assert sorted((o, g is not None) for o, g in attempts) == sorted(
            [
                ("retry", True),
                ("failed", True),
                ("failed", True),
                ("retry", True),
                ("succeeded", False),
                ("lost", True),
                ("succeeded", False),
            ]
        )
        types = set(conn.execute(select(ErrorGroupType.__table__)).all())
        assert types == {
            (lookup.id, "TEST_NO_CUSTOMER", 3),
            (bad_price.id, "TEST_BAD_PRICE", 1),
            (lost.id, "TEST_OK", 1),
        }
        hours = conn.execute(
            select(ErrorGroupHour.group_id, ErrorGroupHour.count).where(
                ErrorGroupHour.group_id == lookup.id
            )
        ).all()
        assert sorted(n for _, n in hours) == [1, 2]  # two 3 hours ago, one this hour
    engine.dispose()

    # From now on the workers group new failures: the same error joins the group of its past.
    app = create_app({**env, "EVENTFLOW_MAX_ATTEMPTS": "1", "TESTING": True})
    with app.app_context():
        assert db.engine.dialect.name == url.split(":")[0]
        error_groups.set_group_status(None, lookup.id, GroupStatus.RESOLVED)
        event = Event(
            user_id=user_id, type="TEST_NO_CUSTOMER", payload={"n": 9, "customers": ["New Co"]}
        )
        db.session.add(event)
        db.session.commit()
        processor_of(app).process(str(event.id))  # the worker's own path: claim, run, fail
        view = error_groups.get_group(lookup.id)  # and it reopened
        assert (view.group.status, view.group.count, view.failed_events) == ("open", 4, 3)
        assert (view.types, view.hourly[-1]) == (["TEST_NO_CUSTOMER"], 2)
        assert db.session.get(Event, event.id).error_group_id == lookup.id
        assert error_groups.replay_group(None, lookup.id) == 3
        assert error_groups.get_group(lookup.id).failed_events == 0
        db.session.remove()
