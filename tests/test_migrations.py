"""`flask db upgrade` builds exactly the models' schema, on PostgreSQL and on SQLite."""

import sqlite3

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from eventflow.extensions import db
from tests.processes import flask_cli


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
        indexes = inspector.get_indexes("events")
    # CONTRACT section 4: user_id, status and created_at are indexed. A composite index serves
    # every query on its leading column, so each must lead a full (not partial) index.
    full = [i for i in indexes if "postgresql_where" not in i.get("dialect_options", {})]
    assert {"user_id", "status", "created_at"} <= {i["column_names"][0] for i in full}
    listing = {tuple(i["column_names"]) for i in full}
    assert {("user_id", "created_at"), ("status", "created_at"), ("type", "created_at")} <= listing
    # No index repeats another's leading column: each one costs every claim and completion.
    leading = [i["column_names"][0] for i in full if not i["unique"]]
    assert len(leading) == len(set(leading)), leading


def test_partial_indexes_leave_out_the_rows_the_pipelines_moves_make(app):
    with app.app_context():
        partial = {
            i["name"]: i["dialect_options"]["postgresql_where"]
            for i in inspect(db.engine).get_indexes("events")
            if "postgresql_where" in i.get("dialect_options", {})
        }
    # Waiting events only (PROCESSING and PROCESSED rows have no entry), processed ones only,
    # failed ones only (a fresh event has no error group), unprocessed ones only (a completion
    # writes no entry there).
    assert set(partial) == {
        "ix_events_waiting_next_attempt_at",
        "ix_events_processed_at",
        "ix_events_error_group_id_created_at",
        "ix_events_failed_error_group_id",
        "ix_events_user_id_status_created_at",
    }
    assert "error_group_id IS NOT NULL" in partial["ix_events_error_group_id_created_at"]
    assert "PENDING" in partial["ix_events_waiting_next_attempt_at"]
    assert "RETRYING" in partial["ix_events_waiting_next_attempt_at"]
    assert "PROCESSING" not in partial["ix_events_waiting_next_attempt_at"]
    assert "processed_at IS NOT NULL" in partial["ix_events_processed_at"]
    assert "FAILED" in partial["ix_events_failed_error_group_id"]  # a group's DLQ events
    assert "<> 'PROCESSED'" in partial["ix_events_user_id_status_created_at"]


def test_the_group_index_carries_the_type_so_a_group_and_type_count_reads_only_it(app):
    with app.app_context():
        indexes = {i["name"]: i for i in inspect(db.engine).get_indexes("events")}
    group = indexes["ix_events_error_group_id_created_at"]
    assert group["column_names"] == ["error_group_id", "created_at"]
    assert group["include_columns"] == ["type"]


def test_db_upgrade_builds_the_schema_on_an_empty_sqlite_file(base_env, tmp_path):
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EVENTFLOW_INSTANCE_PATH"] = str(tmp_path)
    flask_cli(env, "db", "upgrade", check=True)
    flask_cli(env, "db", "check", check=True)
    with sqlite3.connect(tmp_path / "eventflow.sqlite3") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "events", "event_attempts"} <= tables
