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

from .logs import REQUEST_ID, emit

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
    """WSGI middleware: a request id for every request, and one log line when it is answered."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

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
            _log(environ, info)
            raise
        except BaseException:
            _log(environ, info)
            raise
        finally:
            REQUEST_ID.reset(context)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if type(body) is list or (  # answered already (the fast path, most errors)
            isinstance(file_wrapper, type) and isinstance(body, file_wrapper)  # sendfile: keep it
        ):
            _log(environ, info)
            return body
        return _LoggedBody(body, environ, info)


class _LoggedBody:
    """A response body that writes the request's line once the server has sent and closed it."""

    def __init__(self, body: Iterable[bytes], environ: dict[str, Any], info: RequestInfo) -> None:
        self.body = body
        self.environ = environ
        self.info = info

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            _log(self.environ, self.info)


def _log(environ: dict[str, Any], info: RequestInfo) -> None:
    try:
        status = int(info.status[:3])
    except ValueError:
        status = 0
    log_request(
        info.request_id,
        environ.get("REQUEST_METHOD"),
        environ.get("PATH_INFO"),
        status,
        time.perf_counter() - info.started,
        info.user_id,
    )


def log_request(
    request_id: str,
    method: str | None,
    path: str | None,
    status: int,
    seconds: float | None,
    user_id: str | None = None,
) -> None:
    """Write a request's line: ERROR for a 5xx, INFO otherwise (`seconds` None: not known)."""
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": None if seconds is None else round(seconds * 1000, 2),
        "user_id": user_id,
    }
    emit(logger, logging.ERROR if status >= 500 else logging.INFO, TEXT, fields)


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
