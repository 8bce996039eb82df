"""Reading requests: the JSON body, the caller's identity, the admin gate."""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
from types import MappingProxyType

from flask import current_app, g, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import NoAuthorizationError, WrongTokenError
from jwt import ExpiredSignatureError

from ..errors import ApiError
from ..events import Viewer
from ..models import Role


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def json_body() -> object:
    """The request body parsed as strict JSON (no NaN/Infinity), or a 400 saying why not."""
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH -> 413 before we get here
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _verified_claims(token: str, secret: str) -> MappingProxyType:
    """Verify a token's signature and algorithm once; clients reuse a token for its lifetime.

    flask-jwt-extended decodes a token several times per request and PyJWT checks every base64
    character in Python: that was the largest cost of an ingest request (BENCHMARKS.md). Expiry is
    not cached: bearer_required checks it on every request. The secret is part of the key.
    """
    return MappingProxyType(decode_token(token, allow_expired=True))


def bearer_required(view):
    """Require a valid, unexpired access token in `Authorization: Bearer …` (401 otherwise).

    Failures raise flask-jwt-extended's own exceptions, so its handlers give the envelope.
    """

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            raise NoAuthorizationError("Missing 'Bearer <token>' Authorization header")
        claims = _verified_claims(token.strip(), current_app.config["JWT_SECRET_KEY"])
        if claims.get("type") != "access":
            raise WrongTokenError("Only access tokens are allowed")
        if claims.get("exp", 0) <= time.time():
            expired = ExpiredSignatureError("Signature has expired")
            # flask-jwt-extended's handler for this error reads these, as its decoder sets them.
            expired.jwt_header, expired.jwt_data = {}, dict(claims)
            raise expired
        g.token_claims = claims
        return view(*args, **kwargs)

    return wrapper


def current_viewer() -> Viewer:
    """The caller from the verified token (no database lookup on the hot path)."""
    claims = g.token_claims
    try:
        user_id = uuid.UUID(claims["sub"])
    except (KeyError, ValueError, TypeError):
        raise ApiError(401, "invalid_token", "the token does not identify a user") from None
    return Viewer(user_id=user_id, is_admin=claims.get("role") == Role.ADMIN.value)


def admin_required(view):
    """Authenticate first, then require the admin role (403 otherwise)."""

    @functools.wraps(view)
    @bearer_required
    def wrapper(*args, **kwargs):
        if not current_viewer().is_admin:
            raise ApiError(403, "forbidden", "this endpoint is for admins only")
        return view(*args, **kwargs)

    return wrapper
