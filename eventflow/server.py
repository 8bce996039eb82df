"""The gunicorn worker EventFlow runs in: gevent, so a WebSocket holds no request thread.

`gunicorn.conf.py` names `eventflow.server.Worker`. It is gunicorn's gevent worker plus two things:

* psycopg2 is made cooperative (psycogreen): without it a query would block every other
  request and socket of the process while it waits for PostgreSQL.
* Requests gunicorn itself rejects before Flask sees them (a request line over
  `limit_request_line`, oversized headers, a malformed request line) get the JSON error
  envelope instead of gunicorn's HTML page, as every /api/v1 error must (CONTRACT section 5).

`gunicorn.conf.py` also names `eventflow.server.Logger`: gunicorn's own lines (and the app's,
through the root logger its workers inherit) in the EVENTFLOW_LOG_FORMAT of eventflow/logs.py,
so a log pipeline reading a production server sees nothing but JSON.

Nothing here runs at import in the app: only gunicorn imports this module.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

from gunicorn import glogging, util
from gunicorn.http import wsgi
from gunicorn.http.errors import (  # type: ignore[attr-defined]  # gunicorn 27; stubs: 26
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    ParseException,
)
from gunicorn.http.message import Request
from gunicorn.workers.ggevent import GeventWorker

from .config import ConfigError, log_format
from .logs import configure_logging, formatter
from .request_log import log_request, request_id_from

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")


def _envelope(raw: bytes, request_id: str) -> tuple[int | None, bytes]:
    """gunicorn's HTML error response as the JSON envelope with the same status, and the status.

    Anything that is not a response (no status line) passes through unchanged, status None.
    """
    match = _STATUS_LINE.match(raw)
    if match is None:
        return None, raw
    status, reason = int(match.group(1)), match.group(2).decode("latin-1")
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"
    message = {
        400: "the request is malformed",
        414: "the request line (URL and query string) is too long",
        431: "the request headers are too large",
    }.get(status, reason.lower() or "the request was refused")
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    return status, head.encode("latin-1") + body


class _JsonErrorSocket:
    """The client socket, but what gunicorn writes as an error page goes out as JSON."""

    def __init__(self, sock: socket.socket, request_id: str) -> None:
        self._sock = sock
        self.request_id = request_id
        self.status: int | None = None  # the error page's status, once written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _rewrite(self, data: bytes) -> bytes:
        status, page = _envelope(bytes(data), self.request_id)
        self.status = status or self.status
        return page

    def sendall(self, data: bytes, *args: Any) -> None:
        self._sock.sendall(self._rewrite(data), *args)

    def send(self, data: bytes, *args: Any) -> int:
        # gunicorn writes an error page in one call; answer for the whole rewritten page.
        self._sock.sendall(self._rewrite(data), *args)
        return len(data)


class _Response(wsgi.Response):
    """gunicorn's response, sending the head with the first body bytes: one send, not two.

    For a small JSON answer (an ingest's 202) the second `send` was ≈ 10 % of a worker's CPU
    (py-spy, BENCHMARKS.md), and a head sent alone can wait on Nagle's algorithm.
    """

    _head = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._head = util.to_bytestring("".join(lines) + "\r\n", "latin-1")
        self.headers_sent = True

    def _flush_head(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            util.write(self.sock, head)

    def _emit_body(self, data: bytes) -> None:
        if self._head and not self.chunked:
            head, self._head = self._head, b""
            util.write(self.sock, head + data)
            return
        self._flush_head()
        super()._emit_body(data)  # type: ignore[misc]  # gunicorn 27's; its stubs are older

    def sendfile(self, respiter: wsgi.FileWrapper) -> bool:
        self.send_headers()
        self._flush_head()
        return super().sendfile(respiter)

    def close(self) -> None:
        self.send_headers()
        self._flush_head()
        super().close()


class Worker(GeventWorker):
    """gunicorn's gevent worker with cooperative psycopg2, one-send responses, JSON errors."""

    def patch(self) -> None:
        super().patch()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        # What wsgi.create() builds for every request (a module attribute the stubs call a type).
        wsgi.Response = _Response  # type: ignore[misc]

    def handle_error(
        self, req: Request | None, client: socket.socket, addr: Any, exc: BaseException
    ) -> None:
        # A request gunicorn refuses before the app sees it gets a request id and a request
        # line here; errors of the app's own requests were logged by the app (request_log.py).
        refused = isinstance(exc, ParseException) and not isinstance(
            exc, (InvalidResponseHeader, InvalidResponseHeaderName)
        )
        sock = _JsonErrorSocket(client, request_id_from(None))  # its headers were not read
        super().handle_error(req, sock, addr, exc)  # type: ignore[arg-type]
        if refused and sock.status is not None:
            req = req or getattr(exc, "req", None)
            method, path = getattr(req, "method", None), getattr(req, "path", None)
            log_request(sock.request_id, method, path, sock.status, None)  # duration unknown


class Logger(glogging.Logger):
    """gunicorn's logger, writing in EVENTFLOW_LOG_FORMAT; the root logger too, for the app."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        try:
            chosen = log_format(os.environ)
        except ConfigError:
            # The app refuses to start with this setting and says why (wsgi.py); until then
            # gunicorn's lines are plain text.
            chosen = "text"
        configure_logging(chosen)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter(chosen))
