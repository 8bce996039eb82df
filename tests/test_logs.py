"""Logs (CONTRACT §12): a line per request with its X-Request-ID, in one format for every line.

Real gunicorn processes on PostgreSQL + Redis; the tests read the lines they write.
"""

from __future__ import annotations

import json
import re
import uuid
from types import SimpleNamespace

import pytest
import requests
import websocket

from eventflow.config import load_settings
from tests.conftest import bearer, flask_cli, launch_gunicorn, wait_for, wait_until_serving

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GENERATED = re.compile(r"^[0-9a-f]{32}$")
REQUEST_FIELDS = {"ts", "level", "logger", "request_id", "method", "path", "status"}
REQUEST_FIELDS |= {"duration_ms", "user_id"}


@pytest.fixture
def serve(app, base_env, tmp_path):
    """Factory: serve(**env) -> a running gunicorn (one worker process): .url, .proc."""
    started = []

    def start(**env: str) -> SimpleNamespace:
        log = tmp_path / f"gunicorn-{len(started)}.log"
        proc, url = launch_gunicorn({**base_env, **env}, log, "--workers", "1")
        started.append(proc)
        wait_until_serving(proc, url)
        return SimpleNamespace(url=url, proc=proc)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def server(serve):
    return serve(EVENTFLOW_LOG_FORMAT="json")


@pytest.fixture
def user(make_user, client):
    """A user and their bearer header."""
    made = make_user()
    return SimpleNamespace(id=str(made.id), headers=bearer(client, made.email))


def lines_of(proc) -> list[dict]:
    """Every complete line the process wrote, each parsed as JSON (one that is not fails)."""
    return [json.loads(line) for line in proc.output().split("\n")[:-1]]


def request_line(server, request_id: str) -> dict:
    def written():
        lines = lines_of(server.proc)
        return next(
            (
                x
                for x in lines
                if x["logger"] == "eventflow.request" and x["request_id"] == request_id
            ),
            None,
        )

    return wait_for(written, message=f"the line of request {request_id}")


def post_event(server, headers: dict, event_type="TEST_OK", payload=None, request_id=None):
    """POST /api/v1/events, with an X-Request-ID header when `request_id` is given."""
    if request_id is not None:
        headers = {**headers, "X-Request-ID": request_id}
    body = {"type": event_type, "payload": payload or {}}
    return requests.post(f"{server.url}/api/v1/events", json=body, headers=headers, timeout=10)


def assert_request_line(line: dict, method: str, path: str, status: int, user_id) -> None:
    assert REQUEST_FIELDS <= set(line), line
    assert TS.match(line["ts"]), line
    assert (line["level"], line["method"], line["path"]) == ("INFO", method, path)
    assert (line["status"], line["user_id"]) == (status, user_id)
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "tab\tinside", "with space", "caf\u00e9", ""],
    ids=["129-chars", "tab", "space", "non-ascii", "empty"],
)
def test_an_insane_request_id_is_replaced(server, user, sent):
    response = post_event(server, user.headers, request_id=sent)
    assert response.status_code == 202
    replaced = response.headers["X-Request-ID"]
    assert GENERATED.match(replaced)
    assert request_line(server, replaced)["status"] == 202


def test_128_visible_characters_are_kept(server, user):
    sent = "".join(chr(33 + n % 94) for n in range(128))
    response = post_event(server, user.headers, request_id=sent)
    assert response.headers["X-Request-ID"] == sent
    assert request_line(server, sent)["status"] == 202


def test_a_control_character_is_refused_by_gunicorn_with_a_new_id_and_a_line(server):
    # gunicorn refuses the header before the app sees it: eventflow/server.py answers (JSON)
    # and logs it, with a request id of its own.
    response = requests.get(f"{server.url}/health", headers={"X-Request-ID": "a\x01b"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    request_id = response.headers["X-Request-ID"]
    assert GENERATED.match(request_id)
    line = request_line(server, request_id)
    assert (line["status"], line["duration_ms"]) == (400, None)


def test_errors_404s_dashboard_and_socketio_get_a_header_and_a_line(server, user):
    bad_event = {"type": "bad type!", "payload": {}}
    cases = [  # method, path, signed in, body, status
        ("GET", "/api/v1/nowhere", False, None, 404),
        ("GET", "/dashboard/", False, None, 302),
        ("GET", "/dashboard/login", False, None, 200),
        ("POST", "/api/v1/events", True, bad_event, 400),
        ("GET", "/api/v1/events", False, None, 401),
        ("GET", "/health", False, None, 200),
    ]
    for method, path, signed_in, body, status in cases:
        request_id = f"case-{uuid.uuid4().hex[:8]}"
        headers = {"X-Request-ID": request_id, **(user.headers if signed_in else {})}
        response = requests.request(
            method, server.url + path, headers=headers, json=body, allow_redirects=False, timeout=10
        )
        assert response.status_code == status, path
        assert response.headers["X-Request-ID"] == request_id, path
        user_id = user.id if signed_in else None
        assert_request_line(request_line(server, request_id), method, path, status, user_id)

    # A Socket.IO WebSocket: the line (101) comes when the socket closes.
    url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, header=["X-Request-ID: socket-1"], timeout=10)
    ws.close()
    line = request_line(server, "socket-1")
    assert (line["method"], line["path"], line["status"]) == ("GET", "/socket.io/", 101)


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
