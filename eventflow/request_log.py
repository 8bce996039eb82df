"""One log line per HTTP request, and its `X-Request-ID`: WSGI middleware in front of everything.

It sits outside the ingest fast path, Socket.IO and Flask, so every request gets its line and its
header: the fast path's 202s, errors, 404s, dashboard pages, Socket.IO handshakes. A client's
`X-Request-ID` is kept when it is 1-128 visible ASCII characters (no spaces or control
characters, which would let a client forge or break log lines); otherwise the request gets a
random one. The id is set as the request's context (logs.REQUEST_ID) while the app runs: ingest
stores it with the events the request creates, so the worker's lines for them carry it too.

The line: `{ts, level, logger, request_id, method, path, status, duration_ms, user_id}`, ERROR
for a 5xx, INFO otherwise. `user_id` is the caller's as their token or dashboard session claims
it, null if anonymous. A WebSocket's line (status 101) comes when it closes: its duration is the
socket's lifetime. Requests gunicorn refuses before the app (a malformed or oversized request)
get their id and line from eventflow/server.py.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, g, request

from .logs import REQUEST_ID, emit, emit_lines

logger = logging.getLogger("eventflow.request")

REQUEST_KEY = "eventflow.request"  # the request's RequestInfo in the WSGI environ
TEXT = (
    "%(method)s %(path)s %(status)s duration_ms=%(duration_ms)s user_id=%(user_id)s "
    "request_id=%(request_id)s"
)
_SANE_ID = re.compile(r"[!-~]{1,128}")


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID if it is sane, else a new random id (32 hex digits)."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    return os.urandom(16).hex()


class RequestInfo:
    """One request as its line will tell it; the app notes the caller on it.

    One object in the environ, not several keys: Flask-SocketIO hands Flask a copy of the
    environ, and a copy shares this object.
    """

    __slots__ = ("request_id", "user_id", "status", "responded", "started")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.user_id: str | None = None  # set by whoever authenticates the request
        self.status = "500"  # what gunicorn answers if the app raises before responding
        self.responded = False
        self.started = time.perf_counter()


class RequestLog:
    """WSGI middleware: a request id for every request, and one log line when it is answered.

    In a gevent worker the lines of requests answered in the same turn of the event loop are
    written together (logs.emit_lines), by a greenlet that runs as soon as this request's
    greenlet waits: a line each, but one record, one handler lock and one write for them all.
    A record and a write per request cost ≈ 0.08 ms of a worker's CPU per ingest; written
    together, the lines are ≈ 2 % of it (BENCHMARKS.md). Errors (5xx) are written at once, and
    so is every line outside gevent (threads, the development server).
    """

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app
        self._spawn: Callable[..., Any] | None = None
        self._decided = False  # whether this process runs gevent: known at the first request
        self._waiting: list[dict[str, Any]] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        info = environ[REQUEST_KEY] = RequestInfo(request_id_from(environ.get("HTTP_X_REQUEST_ID")))

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            info.status = status
            info.responded = True
            headers.append(("X-Request-ID", info.request_id))
            return start_response(status, headers, exc_info)

        context = REQUEST_ID.set(info.request_id)
        try:
            body: Iterable[bytes] = self.wsgi_app(environ, start)
        except StopIteration:
            # gunicorn's sign that the app took the connection over: a WebSocket, which said
            # 101 itself and has now closed (its line's duration is the socket's lifetime).
            if not info.responded:
                info.status = "101"
            self.log(environ, info)
            raise
        except BaseException:
            self.log(environ, info)
            raise
        finally:
            REQUEST_ID.reset(context)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if type(body) is list or (  # answered already (the fast path, most errors)
            isinstance(file_wrapper, type) and isinstance(body, file_wrapper)  # sendfile: keep it
        ):
            self.log(environ, info)
            return body
        return _LoggedBody(body, environ, info, self.log)

    def log(self, environ: dict[str, Any], info: RequestInfo) -> None:
        """Write the request's line, or hand it to this turn of the event loop's write."""
        try:
            status = int(info.status[:3])
        except ValueError:
            status = 0
        seconds = time.perf_counter() - info.started
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        fields = request_line(info.request_id, method, path, status, seconds, info.user_id)
        if not self._decided:
            self._spawn, self._decided = _gevent_spawn(), True
        if self._spawn is None or status >= 500:
            emit(logger, _level(status), TEXT, fields)
            return
        self._waiting.append(fields)
        if len(self._waiting) == 1:
            self._spawn(self._write_waiting)

    def _write_waiting(self) -> None:
        lines, self._waiting = self._waiting, []
        emit_lines(logger, logging.INFO, TEXT, lines)


def _gevent_spawn() -> Callable[..., Any] | None:
    """gevent.spawn if this process runs gevent (gunicorn's worker), else None."""
    try:
        from gevent import monkey, spawn
    except ImportError:  # pragma: no cover - gevent is a pinned dependency
        return None
    return spawn if monkey.is_module_patched("socket") else None


class _LoggedBody:
    """A response body that writes the request's line once the server has sent and closed it."""

    def __init__(
        self,
        body: Iterable[bytes],
        environ: dict[str, Any],
        info: RequestInfo,
        log: Callable[..., Any],
    ) -> None:
        self.body = body
        self.environ = environ
        self.info = info
        self.log = log

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.log(self.environ, self.info)


def request_line(
    request_id: str,
    method: str | None,
    path: str | None,
    status: int,
    seconds: float | None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """The fields of a request's line (`seconds` None: not known)."""
    return {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": None if seconds is None else round(seconds * 1000, 2),
        "user_id": user_id,
    }


def log_request(
    request_id: str, method: str | None, path: str | None, status: int, seconds: float | None
) -> None:
    """Write the line of a request the app did not see (gunicorn refused it) at once."""
    emit(logger, _level(status), TEXT, request_line(request_id, method, path, status, seconds))


def _level(status: int) -> int:
    return logging.ERROR if status >= 500 else logging.INFO


def _note_user(_exc: BaseException | None) -> None:
    """Flask teardown: note the caller (API token or dashboard session) for the request's line."""
    info = request.environ.get(REQUEST_KEY)
    if info is None:  # the app called without the middleware (a test's request context)
        return
    credentials = g.get("credentials")
    if credentials is not None:
        info.user_id = str(credentials.user_id)
    elif (admin := g.get("admin")) is not None:
        info.user_id = str(admin.id)


def install_request_log(app: Flask) -> None:
    """Put the request log outermost, so it sees every request the app is given."""
    app.teardown_request(_note_user)
    app.wsgi_app = RequestLog(app.wsgi_app)  # type: ignore[method-assign]
