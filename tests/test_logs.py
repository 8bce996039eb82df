"""Logs (CONTRACT §12): a line per request and per attempt, joined by the request's X-Request-ID.

Real gunicorn and worker processes on PostgreSQL + Redis; the tests read the lines they write.
gunicorn runs one worker process, so a token's first ingest is answered by the Flask route and
the next ones by the fast path (api/fast_ingest.py): both are checked.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import uuid
from types import SimpleNamespace

import pytest
import requests
import websocket
from sqlalchemy import select

from eventflow.config import load_settings
from eventflow.extensions import db
from eventflow.logs import JsonFormatter, TextFormatter, emit_lines
from eventflow.models import Event
from tests.conftest import bearer, flask_cli, launch_gunicorn, wait_for, wait_until_serving
from tests.pipeline import statuses, wait_terminal

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GENERATED = re.compile(r"^[0-9a-f]{32}$")
REQUEST_FIELDS = {"ts", "level", "logger", "request_id", "method", "path", "status"}
REQUEST_FIELDS |= {"duration_ms", "user_id"}
ATTEMPT_FIELDS = {"ts", "level", "logger", "request_id", "event_id", "type", "attempt", "outcome"}
ATTEMPT_FIELDS |= {"duration_ms"}


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
def json_worker(app, start_worker):
    return start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json")


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


def attempt_lines(worker, event_id: str, count: int = 1) -> list[dict]:
    """The worker's first `count` attempt lines of the event, in order."""

    def written():
        lines = [
            x
            for x in lines_of(worker)
            if x["logger"] == "eventflow.attempt" and x["event_id"] == event_id
        ]
        return lines[:count] if len(lines) >= count else None

    return wait_for(written, message=f"{count} attempt line(s) of event {event_id}")


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


def assert_attempt_line(line: dict, request_id, event_type: str, attempt: int, outcome: str):
    assert ATTEMPT_FIELDS <= set(line), line
    assert TS.match(line["ts"]), line
    assert (line["request_id"], line["type"]) == (request_id, event_type)
    assert (line["attempt"], line["outcome"]) == (attempt, outcome)
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0


def test_a_clients_request_id_comes_back_and_reaches_the_workers_attempt_line(
    server, json_worker, user, app
):
    # The token's first ingest is answered by the Flask route, the second by the fast path.
    for request_id in ("abc-123", "abc-124"):
        response = post_event(server, user.headers, request_id=request_id)
        assert response.status_code == 202
        assert response.headers["X-Request-ID"] == request_id
        event_id = response.json()["eventId"]

        line = request_line(server, request_id)
        assert_request_line(line, "POST", "/api/v1/events", 202, user.id)
        (attempt,) = attempt_lines(json_worker, event_id)
        assert_attempt_line(attempt, request_id, "TEST_OK", 1, "processed")
        assert attempt["level"] == "INFO"
        with app.app_context():
            stored = db.session.scalar(select(Event.request_id).where(Event.id == event_id))
        assert stored == request_id


def test_every_event_of_a_batch_carries_the_batch_requests_id(server, json_worker, user):
    events = [
        {"type": "TEST_OK", "payload": {"n": 1}},
        {"type": "TEST_OK", "payload": {"n": 2}, "idempotency_key": "k-1"},
        {"type": "TEST_OK", "payload": {"n": 3}, "idempotency_key": "k-1"},  # a duplicate
        {"type": "TEST_PERMANENT", "payload": {}},
    ]
    response = requests.post(
        f"{server.url}/api/v1/events/batch",
        json={"events": events},
        headers={**user.headers, "X-Request-ID": "batch-7"},
        timeout=10,
    )
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == "batch-7"
    items = response.json()["items"]
    assert [item["status"] for item in items] == ["queued", "queued", "duplicate", "queued"]

    assert_request_line(
        request_line(server, "batch-7"), "POST", "/api/v1/events/batch", 202, user.id
    )
    expected = [(items[0], "processed"), (items[1], "processed"), (items[3], "failed")]
    for item, outcome in expected:
        (line,) = attempt_lines(json_worker, item["eventId"])
        assert_attempt_line(line, "batch-7", line["type"], 1, outcome)


def test_a_request_without_the_header_gets_a_generated_id_in_both_lines(server, json_worker, user):
    response = post_event(server, user.headers)
    assert response.status_code == 202
    request_id = response.headers["X-Request-ID"]
    assert GENERATED.match(request_id)
    assert_request_line(request_line(server, request_id), "POST", "/api/v1/events", 202, user.id)
    (attempt,) = attempt_lines(json_worker, response.json()["eventId"])
    assert_attempt_line(attempt, request_id, "TEST_OK", 1, "processed")


def test_failed_attempts_log_retry_then_failed_with_the_error(server, start_worker, user):
    worker = start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json", EVENTFLOW_MAX_ATTEMPTS="2")
    failing = post_event(server, user.headers, "TEST_ALWAYS_FAILS", request_id="fails-1")
    permanent = post_event(server, user.headers, "TEST_PERMANENT", request_id="fails-2")

    retry, failed = attempt_lines(worker, failing.json()["eventId"], count=2)
    assert_attempt_line(retry, "fails-1", "TEST_ALWAYS_FAILS", 1, "retry")
    assert retry["level"] == "WARNING"
    assert retry["error"] == "ValueError: this handler always fails"
    assert retry["retry_in_ms"] >= 0
    assert_attempt_line(failed, "fails-1", "TEST_ALWAYS_FAILS", 2, "failed")
    assert failed["level"] == "ERROR"
    assert failed["error"] == "ValueError: this handler always fails"

    (dead,) = attempt_lines(worker, permanent.json()["eventId"])
    assert_attempt_line(dead, "fails-2", "TEST_PERMANENT", 1, "failed")
    assert dead["error"] == "PermanentError: cannot ever succeed"


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


def test_in_json_every_line_gunicorn_and_the_worker_write_is_a_json_object(
    server, json_worker, user
):
    response = post_event(server, user.headers, request_id="all-json")
    attempt_lines(json_worker, response.json()["eventId"])
    request_line(server, "all-json")
    json_worker.signal(signal.SIGTERM)
    wait_for(lambda: json_worker.proc.poll() is not None, message="the worker to exit")
    for proc in (server.proc, json_worker):
        lines = lines_of(proc)  # every line parses as JSON, gunicorn's own included
        assert all({"ts", "level", "logger"} <= set(x) for x in lines)
        assert all(
            "message" in x or x["logger"] in ("eventflow.request", "eventflow.attempt")
            for x in lines
        )
    loggers = {x["logger"] for x in lines_of(server.proc)}
    assert {"gunicorn.error", "eventflow.request"} <= loggers
    assert any(x["logger"] == "huey.consumer" for x in lines_of(json_worker))


def test_replays_keep_the_request_id_of_the_request_that_created_the_event(
    server, start_worker, user, make_user, client, app, tmp_path
):
    switch = tmp_path / "failing"
    switch.touch()
    worker = start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json", EVENTFLOW_MAX_ATTEMPTS="1")
    response = post_event(
        server,
        user.headers,
        "TEST_TOGGLE",
        {"fail_while": str(switch)},
        request_id="made-1",
    )
    event_id = response.json()["eventId"]
    assert wait_terminal(app, [event_id]) == {event_id: "FAILED"}
    switch.unlink()

    admin = bearer(client, make_user(admin=True).email)
    replay = requests.post(
        f"{server.url}/api/v1/events/{event_id}/replay",
        headers={**admin, "X-Request-ID": "replay-1"},
        timeout=10,
    )
    assert replay.status_code == 202
    assert request_line(server, "replay-1")["status"] == 202
    failed, processed = attempt_lines(worker, event_id, count=2)
    assert_attempt_line(failed, "made-1", "TEST_TOGGLE", 1, "failed")
    assert_attempt_line(processed, "made-1", "TEST_TOGGLE", 1, "processed")  # a fresh budget


def test_recovery_logs_an_orphaned_attempt_with_the_events_request_id(
    server, start_worker, user, app
):
    first = start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json")
    response = post_event(server, user.headers, "TEST_SLOW", {"seconds": 3}, request_id="slow-1")
    event_id = response.json()["eventId"]
    wait_for(lambda: statuses(app, [event_id])[event_id] == "PROCESSING", message="the claim")
    first.kill()  # mid-handler: only PostgreSQL knows the event now

    second = start_worker("--workers", "2", EVENTFLOW_LOG_FORMAT="json")
    orphaned, processed = attempt_lines(second, event_id, count=2)
    assert {key: orphaned[key] for key in ("request_id", "attempt", "outcome", "status")} == {
        "request_id": "slow-1",
        "attempt": 1,
        "outcome": "orphaned",
        "status": "RETRYING",  # what recovery made of the event
    }
    assert (orphaned["level"], orphaned["duration_ms"]) == ("WARNING", None)
    assert_attempt_line(processed, "slow-1", "TEST_SLOW", 2, "processed")


def test_text_format_in_development_is_human_readable(serve, start_worker, user):
    server = serve(EVENTFLOW_ENV="development")
    worker = start_worker("--workers", "2", EVENTFLOW_ENV="development")
    response = post_event(server, user.headers, request_id="dev-1")
    event_id = response.json()["eventId"]
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    request = re.compile(
        rf"^{ts} INFO eventflow\.request: POST /api/v1/events 202 duration_ms=[\d.]+ "
        rf"user_id={user.id} request_id=dev-1$",
        re.MULTILINE,
    )
    attempt = re.compile(
        rf"^{ts} INFO eventflow\.attempt: event {event_id} TEST_OK attempt 1 processed "
        rf"duration_ms=[\d.]+ request_id=dev-1$",
        re.MULTILINE,
    )
    wait_for(lambda: request.search(server.proc.output()), message="the request's text line")
    wait_for(lambda: attempt.search(worker.output()), message="the attempt's text line")
    assert re.search(rf"^{ts} INFO gunicorn\.error: Booting worker", server.proc.output(), re.M)


def test_lines_handed_over_together_still_come_out_a_line_each():
    # A worker writes the processed lines of a batch as one record (logs.emit_lines).
    lines = [{"event_id": f"e-{n}", "outcome": "processed"} for n in range(3)]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("eventflow.tests.lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        handler.setFormatter(JsonFormatter())
        emit_lines(logger, logging.WARNING, "%(event_id)s %(outcome)s", lines)
        parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(x["level"], x["event_id"], x["outcome"]) for x in parsed] == [
            ("WARNING", f"e-{n}", "processed") for n in range(3)
        ]
        stream.seek(0)
        stream.truncate()
        handler.setFormatter(TextFormatter())
        emit_lines(logger, logging.WARNING, "%(event_id)s %(outcome)s", lines)
        text = stream.getvalue().splitlines()
        assert [line.split(" ", 1)[1] for line in text] == [
            f"WARNING eventflow.tests.lines: e-{n} processed" for n in range(3)
        ]
    finally:
        logger.removeHandler(handler)


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
