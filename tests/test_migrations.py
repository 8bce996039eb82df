"""`flask db upgrade` builds exactly the models' schema, on PostgreSQL and on SQLite."""

import sqlite3

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from eventflow.extensions import db
from tests.conftest import flask_cli


def test_migrated_postgresql_schema_has_no_pending_autogenerate_diff(app):
    with app.app_context():
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_postgresql_uses_jsonb_and_native_uuid_and_indexes_the_list_queries(app):
    with app.app_context():
        inspector = inspect(db.engine)
        columns = {c["name"]: c for c in inspector.get_columns("events")}
        assert columns["payload"]["type"].__class__.__name__ == "JSONB"
        assert columns["id"]["type"].__class__.__name__ == "UUID"
        indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("events")}
    assert {("user_id",), ("status",), ("created_at",)} <= indexed
    assert ("user_id", "created_at") in indexed


def test_db_upgrade_builds_the_schema_on_an_empty_sqlite_file(base_env, tmp_path):
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EVENTFLOW_INSTANCE_PATH"] = str(tmp_path)
    flask_cli(env, "db", "upgrade", check=True)
    flask_cli(env, "db", "check", check=True)
    with sqlite3.connect(tmp_path / "eventflow.sqlite3") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "events", "event_attempts"} <= tables
