"""`POST /api/v1/events` without Flask's request machinery, when everything about it is ordinary.

Ingest is the one request that arrives thousands of times a second. Flask's request and app
contexts, the cookie session, the response object and the after-request hooks were about a third
of its CPU (py-spy; BENCHMARKS.md), and none of them does anything for a valid ingest. This WSGI
middleware, in front of the Flask app, handles the happy path itself with the same functions the
route uses: the verified-claims cache, the ingest validation and the group committer.

Anything else — no or a bad token, a body to refuse, a repeated Idempotency-Key, a dead session,
a database error, a rate limit configured — is passed on untouched to the Flask route, which gives
the answer (and its error envelope). Passing on is safe: this path writes nothing unless it
answers 202.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flask import Flask

from .. import ingest, tokens
from ..group_commit import GroupCommitter, Pending
from ..logs import current_request_id
from ..models import utcnow
from ..request_log import REQUEST_KEY
from ..schemas.parsing import parse_json
from ..security import SECURITY_HEADERS, STRICT_TRANSPORT_SECURITY
from .inputs import _verified_claims

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH = "/api/v1/events"
MAX_BODY_BYTES = 1024 * 1024


class FastIngest:
    """WSGI middleware: answers ordinary ingests itself and hands everything else to `wsgi_app`."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, committer: GroupCommitter):
        self.app = app
        self.wsgi_app = wsgi_app
        self.committer = committer
        self.secret = app.config["JWT_SECRET_KEY"]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        body = _read_body(environ)
        event_id = self._ingest(environ, body) if body is not None else None
        if event_id is None:
            if body is not None:  # the route reads the body again
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
            return self.wsgi_app(environ, start_response)
        content = b'{"eventId":"%s","status":"queued"}\n' % event_id.encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(content))),
            ("Location", f"{PATH}/{event_id}"),
            *SECURITY_HEADERS,
        ]
        if environ.get("wsgi.url_scheme") == "https":
            headers.append(("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
        start_response("202 ACCEPTED", headers)
        return [content]

    def _ingest(self, environ: WSGIEnvironment, body: bytes) -> str | None:
        """The new event's id once committed and queued; None for anything out of the ordinary."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        try:
            # A token not seen yet needs the app context to verify: the route does that once.
            claims, credentials, user_id = _session_of(token.strip(), self.secret)
            if claims.get("type") != "access" or claims.get("exp", 0) <= time.time():
                return None
            key = ingest.check_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
            event_type, _, payload_json = ingest.validate_event(parse_json(body))
        except Exception:  # the route will say what is wrong
            return None
        row = Pending(
            id=ingest.new_event_id(),
            user_id=credentials.user_id,
            type=event_type,
            payload_json=payload_json,
            idempotency_key=key,
            created_at=utcnow(),
            generation=credentials.generation,
            session_id=credentials.session_id,
            request_id=current_request_id(),
        )
        try:
            self.committer.submit(row)
        except Exception:  # the group was not written: the route tries again and answers
            return None
        if not row.inserted:
            return None
        request = environ.get(REQUEST_KEY)
        if request is not None:  # for the request's log line
            request.user_id = user_id
        return row.id


@functools.lru_cache(maxsize=4096)
def _session_of(
    token: str, secret: str
) -> tuple[MappingProxyType[str, Any], tokens.Credentials, str]:
    """A verified token's claims, the session they name and its user id, once per token."""
    claims = _verified_claims(token, secret)
    credentials = tokens.credentials_from_claims(claims)
    return claims, credentials, str(credentials.user_id)


def _read_body(environ: WSGIEnvironment) -> bytes | None:
    """The request body, if it has a length within the limit (else the route decides)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    if not 0 < length <= MAX_BODY_BYTES:
        return None
    body = environ["wsgi.input"].read(length)
    return body if len(body) == length else None


def install_fast_ingest(app: Flask) -> None:
    """Put the fast path in front of the app when ingest group-commits and is not rate-limited."""
    committer = app.extensions.get(ingest.COMMITTER_KEY)
    if committer is not None and app.config["EVENTFLOW"].rate_limit_ingest is None:
        app.wsgi_app = FastIngest(app, app.wsgi_app, committer)  # type: ignore[method-assign]
