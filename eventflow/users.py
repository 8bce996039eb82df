"""Use cases for accounts: register, authenticate, change password or role, delete."""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Iterable

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from . import audit
from .errors import ApiError
from .extensions import db
from .models import Event, Role, User
from .tokens import revoke_all_sessions

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


def create_user(
    email: object,
    password: object,
    *,
    admin: bool = False,
    role: object = None,
    registered: bool = False,
) -> User:
    """Create a user; 400 for a bad e-mail, password or role, 409 when the e-mail is taken.

    The role is `role` when given, else admin or user. Audited: by the new user themselves when
    `registered` (the API's sign-up), else by the command line.
    """
    address = normalize_email(email)
    secret = check_password(password)
    wanted = parse_role(role) if role is not None else Role.ADMIN if admin else Role.USER
    if find_user_by_email(address) is not None:
        raise ApiError(409, "email_taken", "an account with this email already exists")
    user = User(
        id=uuid.uuid4(),
        email=address,
        password_hash=generate_password_hash(secret),
        role=str(wanted),
    )
    db.session.add(user)
    try:
        db.session.flush()  # the user's row first: the audit entry refers to it
        audit.record(user if registered else None, "create_user", target=address, note=str(wanted))
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


def change_password(user_id: uuid.UUID, current: object, new: object) -> None:
    """Set a new password after checking the current one; every token of the user is revoked."""
    user = db.session.get(User, user_id)
    if user is None:
        raise ApiError(401, "invalid_token", "the token's user no longer exists")
    if not isinstance(current, str) or not check_password_hash(user.password_hash, current):
        raise ApiError(403, "invalid_credentials", "the current password is wrong")
    user.password_hash = generate_password_hash(check_password(new))
    revoke_all_sessions(user.id)
    db.session.commit()


def parse_role(raw: object) -> str:
    if raw not in {role.value for role in Role}:
        allowed = ", ".join(role.value for role in Role)
        raise ApiError(400, "invalid_role", f"role must be one of {allowed}")
    return str(raw)


def set_role(email: str, role: object) -> User:
    """Give the user another role; it applies to their tokens and sessions on the next request."""
    wanted = parse_role(role)
    user = find_user_by_email(email)
    if user is None:
        raise ApiError(404, "user_not_found", f"no user with email {email!r}")
    user.role = wanted
    audit.record(None, "set_role", target=user.email, note=wanted)  # the command line
    db.session.commit()
    return user


def delete_user(email: str) -> int:
    """Delete the user and their events; their tokens stop working at once. Returns the events."""
    user = find_user_by_email(email)
    if user is None:
        raise ApiError(404, "user_not_found", f"no user with email {email!r}")
    deleted = db.session.execute(delete(Event).where(Event.user_id == user.id))
    assert isinstance(deleted, CursorResult)  # what a DELETE returns: it has the rowcount
    removed = deleted.rowcount
    db.session.delete(user)
    db.session.commit()
    return removed


def ensure_admin(email: str) -> tuple[User, str | None]:
    """Return an admin, creating one with a random password if none exists."""
    existing = db.session.scalar(select(User).where(User.role == Role.ADMIN.value).limit(1))
    if existing is not None:
        return existing, None
    password = secrets.token_urlsafe(12)
    return create_user(email, password, admin=True), password


def user_emails(user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """E-mail addresses of the given users, for labelling a page of events (one query)."""
    wanted = set(user_ids)
    if not wanted:
        return {}
    rows = db.session.execute(select(User.id, User.email).where(User.id.in_(wanted)))
    return {row.id: row.email for row in rows}
