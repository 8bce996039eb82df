"""Tokens and sessions that can be taken back: issue, refresh, revoke, and check on each request.

Every login starts a session with its own id (`sid`), carried by its access and refresh tokens
and by a dashboard session cookie, and records the user's token generation (`gen`). A request is
honoured only while, in the database:

* the user still exists (deletion takes effect on the next request);
* the user's `token_generation` equals the token's `gen` (a password change bumps it, which
  revokes every token and dashboard session of the user at once);
* the session id is not in `revoked_tokens` (logout).

The role comes from the same row, not from the token, so a demoted admin loses admin rights on
the next request. The check is one primary-key lookup (`check_session`); ingest does it inside
its INSERT instead (see ingest.create_event), so it costs the hot path no extra round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import bindparam, delete, exists, select, update
from sqlalchemy.exc import IntegrityError

from .config import Settings
from .errors import ApiError
from .extensions import db
from .models import RevokedToken, User, utcnow

# What a login or refresh answers: the tokens, their type and the access token's lifetime.
TokenReply = dict[str, str | int]


@dataclass(frozen=True)
class Credentials:
    """What a verified token (or dashboard session) claims: who, which session, which generation."""

    user_id: uuid.UUID
    session_id: str
    generation: int


def credentials_from_claims(claims: Mapping[str, Any]) -> Credentials:
    """Credentials from a signature-verified token's claims; 401 if they are incomplete."""
    try:
        user_id = uuid.UUID(claims["sub"])
        session_id = claims["sid"]
        generation = claims["gen"]
    except (KeyError, ValueError, TypeError, AttributeError):
        raise ApiError(401, "invalid_token", "the token does not identify a session") from None
    if not isinstance(session_id, str) or not isinstance(generation, int):
        raise ApiError(401, "invalid_token", "the token does not identify a session")
    return Credentials(user_id=user_id, session_id=session_id, generation=generation)


_SESSION_STATE = select(
    User.role,
    User.token_generation,
    exists().where(RevokedToken.jti == bindparam("sid")).label("revoked"),
).where(User.id == bindparam("uid"))


def check_session(credentials: Credentials) -> str:
    """The user's current role if the session is still valid; a 401 saying why otherwise."""
    row = db.session.execute(
        _SESSION_STATE, {"uid": credentials.user_id, "sid": credentials.session_id}
    ).first()
    if row is None:
        raise ApiError(401, "invalid_token", "the token's user no longer exists")
    if row.revoked or row.token_generation != credentials.generation:
        raise ApiError(401, "token_revoked", "the token has been revoked; log in again")
    role: str = row.role
    return role


def start_session(user: User) -> Credentials:
    """A new session for a user who has just proved their password."""
    return Credentials(
        user_id=user.id, session_id=uuid.uuid4().hex, generation=user.token_generation
    )


def access_token(credentials: Credentials, role: str, settings: Settings) -> TokenReply:
    """An access token for the session (the role claim is informative: the database decides)."""
    token = create_access_token(
        identity=str(credentials.user_id),
        additional_claims={
            "role": role,
            "sid": credentials.session_id,
            "gen": credentials.generation,
        },
        expires_delta=timedelta(seconds=settings.jwt_access_token_expires),
    )
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": int(settings.jwt_access_token_expires),
    }


def issue_tokens(user: User, settings: Settings) -> TokenReply:
    """Login: a new session's access and refresh tokens."""
    credentials = start_session(user)
    refresh = create_refresh_token(
        identity=str(user.id),
        additional_claims={"sid": credentials.session_id, "gen": credentials.generation},
        expires_delta=timedelta(seconds=settings.jwt_refresh_token_expires),
    )
    return {**access_token(credentials, user.role, settings), "refresh_token": refresh}


def refresh_access(credentials: Credentials, settings: Settings) -> TokenReply:
    """A new access token for a still-valid session (the refresh token stays the same)."""
    role = check_session(credentials)
    return access_token(credentials, role, settings)


def revoke_session(credentials: Credentials, settings: Settings) -> None:
    """Logout: the session's access and refresh tokens stop working at once, everywhere."""
    check_session(credentials)
    now = utcnow()
    # Sessions that could no longer be used anyway need no entry: prune them as we go.
    db.session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    db.session.add(
        RevokedToken(
            jti=credentials.session_id,
            user_id=credentials.user_id,
            expires_at=now
            + timedelta(
                seconds=max(settings.jwt_refresh_token_expires, settings.session_max_seconds)
            ),
        )
    )
    try:
        db.session.commit()
    except IntegrityError:  # revoked by a concurrent logout: the outcome is the same
        db.session.rollback()


def revoke_all_sessions(user_id: uuid.UUID) -> None:
    """Every token and dashboard session of the user stops working (in the caller's transaction)."""
    db.session.execute(
        update(User).where(User.id == user_id).values(token_generation=User.token_generation + 1)
    )
