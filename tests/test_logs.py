"""Logs (CONTRACT §12): one format for every line (EVENTFLOW_LOG_FORMAT), start-up errors included.

Real gunicorn and worker processes; the tests read the lines they write.
"""

from __future__ import annotations

import json

from eventflow.config import load_settings
from tests.conftest import flask_cli, launch_gunicorn, wait_for


def lines_of(proc) -> list[dict]:
    """Every complete line the process wrote, each parsed as JSON (one that is not fails)."""
    return [json.loads(line) for line in proc.output().split("\n")[:-1]]


def test_the_format_defaults_to_json_in_production_and_text_elsewhere():
    def log_format(**env: str) -> str:
        return load_settings({"SECRET_KEY": "s" * 40, "JWT_SECRET_KEY": "j" * 40, **env}).log_format

    assert log_format(EVENTFLOW_ENV="production") == "json"
    assert log_format(DATABASE_URL="postgresql://db/x") == "json"  # production by default
    assert log_format() == "text"  # the embedded default: development
    assert log_format(EVENTFLOW_ENV="test") == "text"
    assert log_format(EVENTFLOW_ENV="production", EVENTFLOW_LOG_FORMAT="text") == "text"
    assert log_format(EVENTFLOW_ENV="development", EVENTFLOW_LOG_FORMAT="JSON") == "json"


def test_a_bad_log_format_stops_the_worker_with_one_line(base_env):
    result = flask_cli({**base_env, "EVENTFLOW_LOG_FORMAT": "yaml"}, "worker")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "eventflow: configuration error: EVENTFLOW_LOG_FORMAT must be json or text, got 'yaml'"
    )


def test_a_production_configuration_error_is_a_json_line_too(base_env, tmp_path):
    env = {**base_env, "EVENTFLOW_ENV": "production", "SECRET_KEY": "", "JWT_SECRET_KEY": ""}
    proc, _ = launch_gunicorn(env, tmp_path / "gunicorn.log", "--workers", "1")
    try:
        wait_for(lambda: proc.proc.poll() is not None, timeout=60, message="gunicorn to give up")
        lines = lines_of(proc)  # every line parses as JSON
    finally:
        proc.stop()
    errors = [x for x in lines if "configuration error" in x.get("message", "")]
    assert errors and errors[0]["level"] == "CRITICAL"
    assert "SECRET_KEY must be set" in errors[0]["message"]
