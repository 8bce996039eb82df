"""Reading requests: the JSON body, the caller's identity, the admin gate."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar, overload

from flask import current_app, g, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import NoAuthorizationError, WrongTokenError
from jwt import ExpiredSignatureError

from .. import audit, tokens
from ..errors import ApiError
from ..events import Viewer
from ..models import User
from ..schemas.parsing import parse_json

P = ParamSpec("P")
R = TypeVar("R")


def json_body() -> object:
    """The request body parsed as strict JSON (no NaN/Infinity), or a 400 saying why not."""
    return parse_json(request.get_data(cache=True))  # over 1 MiB -> 413 before we get here


@functools.lru_cache(maxsize=4096)
def _verified_claims(token: str, secret: str) -> MappingProxyType[str, Any]:
    """Verify a token's signature and algorithm once; clients reuse a token for its lifetime.

    flask-jwt-extended decodes a token several times per request and PyJWT checks every base64
    character in Python: that was the largest cost of an ingest request (BENCHMARKS.md). Expiry is
    not cached: bearer_required checks it on every request. The secret is part of the key.
    """
    return MappingProxyType(decode_token(token, allow_expired=True))


def verified_claims(*token_types: str) -> MappingProxyType[str, Any]:
    """The claims of the `Authorization: Bearer …` token: signed by us, unexpired, of a wanted type.

    Failures raise flask-jwt-extended's own exceptions, so its handlers give the envelope.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not token.strip():
        raise NoAuthorizationError("Missing 'Bearer <token>' Authorization header")
    claims = _verified_claims(token.strip(), current_app.config["JWT_SECRET_KEY"])
    if claims.get("type") not in token_types:
        raise WrongTokenError(f"Only {' or '.join(token_types)} tokens are allowed")
    if claims.get("exp", 0) <= time.time():
        expired = ExpiredSignatureError("Signature has expired")
        # flask-jwt-extended's handler for this error reads these, as its decoder sets them;
        # PyJWT's exception class does not declare them, hence the ignore.
        expired.jwt_header, expired.jwt_data = {}, dict(claims)  # type: ignore[attr-defined]
        raise expired
    return claims


@overload
def bearer_required(view: Callable[P, R]) -> Callable[P, R]: ...


@overload
def bearer_required(
    *, check_session: bool = True
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def bearer_required(
    view: Callable[P, R] | None = None, *, check_session: bool = True
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Require a valid access token of a live session (401 otherwise).

    The session check (user exists, not logged out, password unchanged; the current role) is one
    primary-key lookup. `check_session=False` is for a view whose own statement makes that check
    (ingest does it inside its INSERT): it must use current_credentials(), never current_viewer().
    """

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            g.credentials = tokens.credentials_from_claims(verified_claims("access"))
            if check_session:
                role = tokens.check_session(g.credentials)
                g.viewer = Viewer(user_id=g.credentials.user_id, role=role)
            return view(*args, **kwargs)

        return wrapper

    return decorate(view) if view is not None else decorate


def current_credentials() -> tokens.Credentials:
    """The caller's session as the token states it (not yet checked against the database)."""
    credentials: tokens.Credentials = g.credentials
    return credentials


def current_viewer() -> Viewer:
    """The caller, with the role the database gives them now."""
    viewer: Viewer = g.viewer
    return viewer


def admin_required(view: Callable[P, R]) -> Callable[P, R]:
    """Authenticate first, then require the admin role (403 otherwise): every action."""

    @functools.wraps(view)
    @bearer_required
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not current_viewer().is_admin:
            raise ApiError(403, "forbidden", "this action is for admins only")
        return view(*args, **kwargs)

    return wrapper


def staff_required(view: Callable[P, R]) -> Callable[P, R]:
    """Authenticate first, then require an admin or a viewer (403 otherwise): admin reads."""

    @functools.wraps(view)
    @bearer_required
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not current_viewer().sees_all:
            raise ApiError(403, "forbidden", "this endpoint is for admins and viewers only")
        return view(*args, **kwargs)

    return wrapper


def acting_user() -> User | None:
    """The admin behind this request, for the audit log."""
    return audit.actor_of(current_viewer().user_id)
