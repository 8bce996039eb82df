"""Reading requests: the JSON body, the caller's identity, the admin gate."""

from __future__ import annotations

import json
import math
import uuid
from functools import wraps

from flask import request
from flask_jwt_extended import get_jwt, jwt_required

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


def current_viewer() -> Viewer:
    """The caller from the verified token (no database lookup on the hot path)."""
    claims = get_jwt()
    try:
        user_id = uuid.UUID(claims["sub"])
    except (KeyError, ValueError, TypeError):
        raise ApiError(401, "invalid_token", "the token does not identify a user") from None
    return Viewer(user_id=user_id, is_admin=claims.get("role") == Role.ADMIN.value)


def admin_required(view):
    """Authenticate first, then require the admin role (403 otherwise)."""

    @wraps(view)
    @jwt_required()
    def wrapper(*args, **kwargs):
        if not current_viewer().is_admin:
            raise ApiError(403, "forbidden", "this endpoint is for admins only")
        return view(*args, **kwargs)

    return wrapper
