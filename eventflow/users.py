"""Use cases for accounts: register, authenticate, create from the CLI."""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Iterable
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import ApiError
from .extensions import db
from .models import Role, User

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the e-mail is unknown, so both failures take the same time."""
    return generate_password_hash("not-a-real-password")


def normalize_email(raw: object) -> str:
    """Return the canonical (lower-case) address or raise a 400 that says what is wrong."""
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(400, "invalid_email", "email is required and must be a string")
    if "\x00" in raw or len(raw) > 320:
        raise ApiError(400, "invalid_email", "email is not a valid e-mail address")
    try:
        address = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ApiError(400, "invalid_email", f"email is not valid: {exc}") from None
    return address.normalized.lower()


def check_password(raw: object) -> str:
    if not isinstance(raw, str):
        raise ApiError(400, "invalid_password", "password is required and must be a string")
    if len(raw) < MIN_PASSWORD_LENGTH:
        raise ApiError(
            400, "invalid_password", f"password must be at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(raw) > MAX_PASSWORD_LENGTH or "\x00" in raw:
        raise ApiError(400, "invalid_password", "password is too long or contains a NUL character")
    return raw


def find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.lower()))


def create_user(email: object, password: object, *, admin: bool = False) -> User:
    """Create a user; 400 for a bad e-mail or password, 409 when the e-mail is taken."""
    address = normalize_email(email)
    secret = check_password(password)
    if find_user_by_email(address) is not None:
        raise ApiError(409, "email_taken", "an account with this email already exists")
    user = User(
        email=address,
        password_hash=generate_password_hash(secret),
        role=Role.ADMIN.value if admin else Role.USER.value,
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent registration won the race
        db.session.rollback()
        raise ApiError(409, "email_taken", "an account with this email already exists") from None
    return user


def authenticate(email: object, password: object) -> User:
    """Return the user for these credentials, or a 401 that does not say which part was wrong."""
    if not isinstance(email, str) or not isinstance(password, str):
        raise ApiError(400, "invalid_request", "email and password are required strings")
    user = None
    if "\x00" not in email and len(email) <= 320:
        user = find_user_by_email(email.strip())
    if user is None:
        check_password_hash(_dummy_hash(), password)
        raise ApiError(401, "invalid_credentials", "invalid email or password")
    if not check_password_hash(user.password_hash, password):
        raise ApiError(401, "invalid_credentials", "invalid email or password")
    return user


def issue_token(user: User, expires_seconds: float) -> dict:
    """An access token for the user, with the role as a claim so routes need no lookup."""
    token = create_access_token(
        identity=str(user.id),
        additional_claims={"role": user.role},
        expires_delta=timedelta(seconds=expires_seconds),
    )
    return {"access_token": token, "token_type": "Bearer", "expires_in": int(expires_seconds)}


def ensure_admin(email: str) -> tuple[User, str | None]:
    """Return an admin, creating one with a random password if none exists."""
    existing = db.session.scalar(select(User).where(User.role == Role.ADMIN.value).limit(1))
    if existing is not None:
        return existing, None
    password = secrets.token_urlsafe(12)
    return create_user(email, password, admin=True), password


def get_user(raw_id: object) -> User | None:
    """The user with this id (e.g. a string from the session), or None."""
    try:
        user_id = uuid.UUID(str(raw_id))
    except ValueError:
        return None
    return db.session.get(User, user_id)


def user_emails(user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """E-mail addresses of the given users, for labelling a page of events (one query)."""
    wanted = set(user_ids)
    if not wanted:
        return {}
    rows = db.session.execute(select(User.id, User.email).where(User.id.in_(wanted)))
    return {row.id: row.email for row in rows}
