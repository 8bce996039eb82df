"""Who may use the dashboard: the admin behind the session cookie or a Socket.IO token."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, redirect, request, session, url_for
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError

from ..models import Role, User
from ..users import get_user

SESSION_KEY = "dashboard_admin_id"


def log_in(user: User) -> None:
    """Start a fresh session for the admin (dropping any old one, its CSRF token included)."""
    session.clear()
    session[SESSION_KEY] = str(user.id)


def log_out() -> None:
    session.clear()


def session_admin() -> User | None:
    """The admin of this session; None when anonymous, deleted or no longer an admin."""
    raw_id = session.get(SESSION_KEY)
    if raw_id is None:
        return None
    user = get_user(raw_id)
    return user if user is not None and user.is_admin else None


def token_admin(token: object) -> str | None:
    """The user id in a valid access token with the admin role, else None."""
    if not isinstance(token, str) or not token:
        return None
    try:
        claims = decode_token(token)
    except (PyJWTError, JWTExtendedException):
        # Bad signature, expired, malformed, or missing claims: all simply "not an admin".
        return None
    if claims.get("type") != "access" or claims.get("role") != Role.ADMIN.value:
        return None
    return str(claims.get("sub"))


def is_background_request() -> bool:
    """True for htmx and other scripted requests, which get a status code instead of a page."""
    return (
        request.headers.get("HX-Request") == "true"
        or request.headers.get("X-Requested-With") == "XMLHttpRequest"
    )


def wants_fragment() -> bool:
    """htmx asks for a part of a page, except when it restores history (it needs it all)."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def refuse() -> Response | tuple:
    """Send a visitor without admin rights to the login page (a 403 for scripted requests)."""
    login_url = url_for("dashboard.login_form", next=request.full_path.rstrip("?"))
    if is_background_request():
        # htmx follows HX-Redirect even on an error status, so an expired session lands on login.
        return "Admins only: please log in again.", 403, {"HX-Redirect": login_url}
    return redirect(login_url)


def safe_next(raw: str | None) -> str:
    """A post-login target inside the dashboard; anything else (other hosts too) goes home."""
    default = url_for("dashboard.overview")
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or "\\" in raw or not parts.path.startswith("/dashboard"):
        return default
    return raw
