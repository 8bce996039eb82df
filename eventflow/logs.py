"""Log lines in one format per process (EVENTFLOW_LOG_FORMAT=json|text), and the request id.

Every line goes through the standard `logging` module to one handler on stderr. In json each line
is one object with at least `ts`, `level` and `logger`; a plain log call adds `message` (and
`exc_info` with the traceback). The request and attempt lines are structured (`emit`,
`emit_lines`): their fields become keys, or fill in a text template. `configure_logging` is
called by each process's entry point (gunicorn's logger, `flask --app wsgi worker`), never at
import.

The request id of the request being served lives in a context variable (one per thread or
greenlet), set by the request-log middleware (request_log.py): ingest stores it with the events
the request creates, and any other line logged while serving the request carries it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import orjson

from .config import ConfigError, log_format

REQUEST_ID: ContextVar[str | None] = ContextVar("eventflow_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served here, or None outside a request."""
    return REQUEST_ID.get()


_second = (0, "")  # the last whole second formatted, and its text


def timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-01-31T12:00:00.250Z."""
    global _second
    second = int(created)
    cached, text = _second
    if second != cached:  # formatting the date is most of the cost: once a second
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, then the structured fields or the message."""

    def format(self, record: logging.LogRecord) -> str:
        head: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        lines = record.__dict__.get("lines")
        if lines:  # structured lines (emit_lines): the head, then each line's fields
            start = orjson.dumps(head)[:-1] + b","
            return b"\n".join([start + orjson.dumps(f, default=str)[1:] for f in lines]).decode()
        head["message"] = record.getMessage()
        request_id = REQUEST_ID.get()
        if request_id is not None:
            head["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            head["exc_info"] = record.exc_text
        if record.stack_info:
            head["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(head, default=str).decode()


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message>` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{timestamp(record.created)} {record.levelname} {record.name}: "
        lines = record.__dict__.get("lines")
        if lines:  # structured lines (emit_lines): each its template filled in
            return "\n".join([head + record.msg % fields for fields in lines])
        text = head + record.getMessage()
        request_id = REQUEST_ID.get()
        if request_id is not None:
            text += f" request_id={request_id}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a log format: "json" or "text"."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class LineHandler(logging.StreamHandler):
    """A stream handler that leaves flushing to a line-buffered stream (stderr is one)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if not getattr(self.stream, "line_buffering", False):
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every logger's lines to stderr in `log_format`; safe to call again.

    EventFlow's loggers log from `level`, libraries from WARNING (their INFO is start-up chatter).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LineHandler):
            root.removeHandler(handler)
    handler = LineHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("eventflow").setLevel(level)
    logging.captureWarnings(True)  # Python's warnings in the same format, not bare on stderr


def configuration_error_line(exc: Exception, env: Mapping[str, str]) -> str:
    """The one line a process that cannot start writes: a JSON object when logs are JSON."""
    message = f"eventflow: configuration error: {exc}"
    try:
        chosen = log_format(env)
    except ConfigError:  # EVENTFLOW_LOG_FORMAT itself is what is wrong
        chosen = "text"
    if chosen != "json":
        return message
    line = {"ts": timestamp(time.time()), "level": "CRITICAL", "logger": "eventflow"}
    return orjson.dumps({**line, "message": message}).decode()


class _Line(logging.LogRecord):
    """The record of structured lines (emit_lines), made without LogRecord.__init__'s lookups.

    It has every attribute a LogRecord has, in its __dict__ where formatters look, so any
    formatter can print it (a formatter other than ours prints the first line only); the
    caller's file, line and function and the thread and process names are left empty.
    """

    def __init__(self, name: str, level: int, template: str, lines: list[Mapping[str, Any]]):
        now = time.time()
        self.__dict__.update(_UNKNOWN)
        self.name = name
        self.levelno = level
        self.levelname = logging.getLevelName(level)
        self.msg = template
        self.args = lines[0]
        self.lines = lines
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self.relativeCreated = (now - _STARTED) * 1000
        self.thread = threading.get_ident()
        self.process = _pid


_UNKNOWN = dict.fromkeys(
    (
        "pathname",
        "filename",
        "module",
        "funcName",
        "threadName",
        "processName",
        "taskName",
        "exc_info",
        "exc_text",
        "stack_info",
    )
) | {"lineno": 0}
_STARTED = time.time()
_pid = os.getpid()  # a system call per line otherwise; kept right across forks below


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def emit(logger: logging.Logger, level: int, template: str, fields: Mapping[str, Any]) -> None:
    """One structured line: `fields` as JSON keys, or `template % fields` as text."""
    emit_lines(logger, level, template, [fields])


def emit_lines(
    logger: logging.Logger, level: int, template: str, lines: list[Mapping[str, Any]]
) -> None:
    """Structured lines of one level and shape: each a line of its own, all in one record.

    These lines come once per request and once per attempt: the record is made lean (`_Line`;
    `logger.info` would also look up the calling frame and the thread's and process's names),
    and a worker hands over the lines of a whole batch at once, so they cost one record, one
    lock and one write instead of one per event. Levels, handlers and filters apply to the
    record as to any other.
    """
    if lines and logger.isEnabledFor(level):
        logger.handle(_Line(logger.name, level, template, lines))
