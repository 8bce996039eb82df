"""Accounts and sessions: register, login, refresh, logout, change password."""

from flask import current_app

from .. import tokens, users
from ..errors import ApiError
from ..security import limit_failed_logins, limit_registrations
from . import bp
from .inputs import bearer_required, current_credentials, json_body, verified_claims


def _credentials() -> tuple[object, object]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body.get("email"), body.get("password")


@bp.post("/auth/register")
@limit_registrations
def register():
    email, password = _credentials()
    user = users.create_user(email, password)
    return {"id": str(user.id), "email": user.email, "role": user.role}, 201


@bp.post("/auth/login")
@limit_failed_logins("json")
def login():
    email, password = _credentials()
    user = users.authenticate(email, password)
    settings = current_app.config["EVENTFLOW"]
    return tokens.issue_tokens(user, settings), 200


@bp.post("/auth/refresh")
def refresh():
    credentials = tokens.credentials_from_claims(verified_claims("refresh"))
    return tokens.refresh_access(credentials, current_app.config["EVENTFLOW"]), 200


@bp.post("/auth/logout")
def logout():
    # Either token of the session may log it out: both stop working.
    credentials = tokens.credentials_from_claims(verified_claims("access", "refresh"))
    tokens.revoke_session(credentials, current_app.config["EVENTFLOW"])
    return "", 204


@bp.post("/auth/password")
@bearer_required
def change_password():
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - {"current_password", "new_password"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    users.change_password(
        current_credentials().user_id, body.get("current_password"), body.get("new_password")
    )
    return "", 204
