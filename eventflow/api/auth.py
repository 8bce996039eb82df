"""Accounts and sessions: register, login, refresh, logout, change password."""

from flask import current_app

from .. import tokens, users
from ..models import User
from ..schemas.requests import Login, PasswordChange, Registration
from ..schemas.responses import AccessToken, Account, Tokens
from ..security import limit_failed_logins, limit_registrations
from . import bp
from .inputs import bearer_required, current_credentials, verified_claims
from .operation import Link, operation

BAD_BODY = "invalid_json, invalid_body, or a field's rule (the message names it)."


@bp.post("/auth/register")
@limit_registrations
@operation(
    "Create an account (role user)",
    tag="auth",
    body=Registration,
    responses={201: Account},
    errors={
        400: f"{BAD_BODY} invalid_email, invalid_password.",
        409: "email_taken: an account with this e-mail exists (compared case-insensitively).",
        413: "",
        429: "rate_limited: too many registrations from this address.",
        503: "",
    },
    links={
        201: {
            "LogIn": Link(
                "api.login",
                body={"email": "$request.body#/email", "password": "$request.body#/password"},
                description="Log in with the new account.",
            )
        }
    },
)
def register(body: Registration) -> tuple[User, int]:
    user = users.create_user(body.email, body.password, registered=True)
    return user, 201


@bp.post("/auth/login")
@limit_failed_logins("json")
@operation(
    "Log in: an access token and a refresh token",
    tag="auth",
    body=Login,
    responses={200: Tokens},
    errors={
        400: f"{BAD_BODY} invalid_request.",
        401: "invalid_credentials: the same for an unknown e-mail and a wrong password.",
        413: "",
        429: "rate_limited: too many failed logins for this account or from this address.",
        503: "",
    },
    links={
        200: {
            "CreateEvent": Link(
                "api.create_event",
                parameters={"header.Authorization": "Bearer {$response.body#/access_token}"},
                description="Ingest an event as the user who logged in.",
            ),
            "Refresh": Link(
                "api.refresh",
                parameters={"header.Authorization": "Bearer {$response.body#/refresh_token}"},
            ),
        }
    },
)
def login(body: Login) -> tokens.TokenReply:
    user = users.authenticate(body.email, body.password)
    return tokens.issue_tokens(user, current_app.config["EVENTFLOW"])


@bp.post("/auth/refresh")
@operation(
    "A new access token for the refresh token's session",
    tag="auth",
    auth="refresh",
    responses={200: AccessToken},
    errors={401: "", 503: ""},
)
def refresh() -> tokens.TokenReply:
    credentials = tokens.credentials_from_claims(verified_claims("refresh"))
    return tokens.refresh_access(credentials, current_app.config["EVENTFLOW"])


@bp.post("/auth/logout")
@operation(
    "End the session: its access and refresh tokens stop working",
    tag="auth",
    auth="access_or_refresh",
    responses={204: None},
    errors={401: "", 503: ""},
)
def logout() -> tuple[str, int]:
    # Either token of the session may log it out: both stop working.
    credentials = tokens.credentials_from_claims(verified_claims("access", "refresh"))
    tokens.revoke_session(credentials, current_app.config["EVENTFLOW"])
    return "", 204


@bp.post("/auth/password")
@bearer_required
@operation(
    "Change the password; every token of the user stops working",
    tag="auth",
    auth="access",
    body=PasswordChange,
    responses={204: None},
    errors={
        400: f"{BAD_BODY} unknown_field, invalid_request, invalid_password.",
        401: "",
        403: "invalid_credentials: the current password is wrong.",
        413: "",
        503: "",
    },
)
def change_password(body: PasswordChange) -> tuple[str, int]:
    users.change_password(current_credentials().user_id, body.current_password, body.new_password)
    return "", 204
