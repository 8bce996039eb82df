"""Who may use the dashboard: an admin or a viewer behind the session cookie or a Socket.IO token.

Viewers see every page and the live feed; only admins act (views.py refuses viewers' POSTs).
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

from flask import current_app, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError

from .. import tokens
from ..errors import ApiError
from ..extensions import db
from ..models import STAFF_ROLES, User

SESSION_KEY = "dashboard"
# The cookie's last-seen time is rewritten at most this often (each rewrite re-sends the cookie).
SEEN_RESOLUTION_SECONDS = 30


def log_in(user: User) -> None:
    """Start a fresh session for the user (dropping any old one, its CSRF token included)."""
    session.clear()
    session.permanent = True
    credentials = tokens.start_session(user)
    now = time.time()
    session[SESSION_KEY] = {
        "uid": str(credentials.user_id),
        "sid": credentials.session_id,
        "gen": credentials.generation,
        "login": now,
        "seen": now,
    }


def _session_credentials() -> tokens.Credentials | None:
    """The session's credentials while it is within its idle and absolute timeouts."""
    state = session.get(SESSION_KEY)
    if not isinstance(state, dict):
        return None
    settings = current_app.config["EVENTFLOW"]
    now = time.time()
    try:
        credentials = tokens.Credentials(
            user_id=uuid.UUID(state["uid"]), session_id=state["sid"], generation=state["gen"]
        )
        expired = (
            now - float(state["login"]) > settings.session_max_seconds
            or now - float(state["seen"]) > settings.session_idle_seconds
        )
    except (KeyError, TypeError, ValueError):
        return None
    if expired:
        return None
    if now - float(state["seen"]) > SEEN_RESOLUTION_SECONDS:
        session[SESSION_KEY] = {**state, "seen": now}
    return credentials


def log_out() -> None:
    """End the session on the server too: a copy of the cookie no longer works."""
    credentials = _session_credentials()
    session.clear()
    if credentials is not None:
        try:
            tokens.revoke_session(credentials, current_app.config["EVENTFLOW"])
        except ApiError:
            pass  # already revoked, or the user is gone: nothing left to end


def session_user() -> User | None:
    """The admin or viewer of this session; None when anonymous, timed out, logged out, or their
    role is now neither."""
    credentials = _session_credentials()
    if credentials is None:
        return None
    try:
        role = tokens.check_session(credentials)
    except ApiError:
        return None
    if role not in STAFF_ROLES:
        return None
    return db.session.get(User, credentials.user_id)


def token_staff(token: object) -> str | None:
    """The user id of a valid access token of a live admin or viewer session, else None."""
    if not isinstance(token, str) or not token:
        return None
    try:
        claims = decode_token(token)
        if claims.get("type") != "access":
            return None
        credentials = tokens.credentials_from_claims(claims)
        role = tokens.check_session(credentials)
    except (PyJWTError, JWTExtendedException, ApiError):
        # Bad signature, expired, malformed, revoked: all simply "not allowed".
        return None
    return str(credentials.user_id) if role in STAFF_ROLES else None


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


def refuse() -> ResponseReturnValue:
    """Send a visitor without dashboard rights to the login page (a 403 for scripted requests)."""
    login_url = url_for("dashboard.login_form", next=request.full_path.rstrip("?"))
    if is_background_request():
        # htmx follows HX-Redirect even on an error status, so an expired session lands on login.
        return "Admins and viewers only: please log in again.", 403, {"HX-Redirect": login_url}
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
