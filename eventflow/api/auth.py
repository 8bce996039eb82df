"""POST /auth/register and /auth/login."""

from flask import current_app

from .. import users
from ..errors import ApiError
from . import bp
from .inputs import json_body


def _credentials() -> tuple[object, object]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body.get("email"), body.get("password")


@bp.post("/auth/register")
def register():
    email, password = _credentials()
    user = users.create_user(email, password)
    return {"id": str(user.id), "email": user.email, "role": user.role}, 201


@bp.post("/auth/login")
def login():
    email, password = _credentials()
    user = users.authenticate(email, password)
    settings = current_app.config["EVENTFLOW"]
    return users.issue_token(user, settings.jwt_access_token_expires), 200
