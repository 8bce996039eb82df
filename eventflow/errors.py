"""ApiError and the one place that turns any /api/v1 error into the JSON envelope."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

import psycopg2
from flask import Flask, Response, jsonify, request
from flask.typing import ResponseReturnValue
from flask_jwt_extended import JWTManager
from flask_limiter import RateLimitExceeded
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, TooManyRequests

from .extensions import db, limiter

logger = logging.getLogger(__name__)
Claims = dict[str, Any]  # a decoded token's header or payload


class ApiError(Exception):
    """An error the client can act on: an HTTP status, a snake_case code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The error envelope: {"error": {"code", "message"}} with its status."""
    return jsonify(error={"code": code, "message": message}), status


def _code_for(exc: HTTPException) -> str:
    name = exc.name or "error"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _wants_envelope() -> bool:
    path = request.path
    return path.startswith("/api/") or path in ("/api", "/health", "/metrics")


# Whichever layer notices that PostgreSQL is gone - a statement, a commit, the pool checking a
# connection in or resetting it - raises one of these, wrapped by SQLAlchemy or raw.
_OUTAGES = (OperationalError, InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError)


def is_database_outage(exc: BaseException | None) -> bool:
    """True when the exception, or one it was raised from, says the database cannot be reached."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _OUTAGES):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _rollback_quietly() -> None:
    try:
        db.session.rollback()
    except Exception:  # the connection is gone; the session is discarded at teardown anyway
        logger.debug("rollback after an error failed", exc_info=True)


def retry_after_seconds(exc: TooManyRequests) -> int:
    """Whole seconds until the breached limit's window ends (its full length if unknown)."""
    if not isinstance(exc, RateLimitExceeded):
        return 1
    breached = limiter.current_limit
    try:
        if breached is not None and breached.breached:
            return max(1, math.ceil(breached.reset_at - time.time()))
    except Exception:  # the limit storage went away since the check: say a whole window
        logger.warning("could not read when a rate limit resets", exc_info=True)
    return exc.limit.limit.get_expiry()


def register_error_handlers(app: Flask) -> None:
    """Render every error on API paths as the envelope; other paths keep Flask's pages."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> ResponseReturnValue:
        if not _wants_envelope():
            return exc
        if exc.code == 413:
            return error_response(413, "payload_too_large", "request body is larger than 1 MiB")
        response = error_response(exc.code or 500, _code_for(exc), exc.description or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response[0].headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(TooManyRequests)
    def handle_rate_limited(exc: TooManyRequests) -> ResponseReturnValue:
        seconds = retry_after_seconds(exc)
        headers = {"Retry-After": str(seconds)}
        if not _wants_envelope():
            return exc.get_response(), headers
        message = f"{exc.description}; try again in {seconds} s"
        body, status = error_response(429, "rate_limited", message)
        return body, status, headers

    def database_down(exc: BaseException) -> ResponseReturnValue:
        _rollback_quietly()
        logger.warning("database unavailable on %s %s: %s", request.method, request.path, exc)
        if not _wants_envelope():
            return "Service Unavailable: the database cannot be reached", 503
        return error_response(503, "database_unavailable", "the database cannot be reached")

    for outage in _OUTAGES:
        app.register_error_handler(outage, database_down)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> ResponseReturnValue:
        if is_database_outage(exc):
            return database_down(exc)
        _rollback_quietly()
        logger.exception("unhandled error on %s %s", request.method, request.path)
        if not _wants_envelope():
            return "Internal Server Error", 500
        return error_response(500, "internal_error", "an unexpected error occurred")


def register_jwt_errors(jwt: JWTManager) -> None:
    """Give every failure of the app's flask-jwt-extended the envelope and a 401."""

    @jwt.unauthorized_loader
    def missing_token(reason: str) -> ResponseReturnValue:
        return error_response(401, "missing_token", f"authentication required: {reason}")

    @jwt.invalid_token_loader
    def invalid_token(reason: str) -> ResponseReturnValue:
        return error_response(401, "invalid_token", f"invalid token: {reason}")

    @jwt.expired_token_loader
    def expired_token(_header: Claims, _payload: Claims) -> ResponseReturnValue:
        return error_response(401, "token_expired", "the token has expired; log in again")

    @jwt.revoked_token_loader
    def revoked_token(_header: Claims, _payload: Claims) -> ResponseReturnValue:
        return error_response(401, "token_revoked", "the token has been revoked")

    @jwt.needs_fresh_token_loader
    def needs_fresh(_header: Claims, _payload: Claims) -> ResponseReturnValue:
        return error_response(401, "fresh_token_required", "a fresh token is required")

    @jwt.user_lookup_error_loader
    def user_lookup_failed(_header: Claims, _payload: Claims) -> ResponseReturnValue:
        return error_response(401, "invalid_token", "the token's user no longer exists")

    @jwt.token_verification_failed_loader
    def verification_failed(_header: Claims, _payload: Claims) -> ResponseReturnValue:
        return error_response(401, "invalid_token", "the token failed verification")
