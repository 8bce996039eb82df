"""The /api/v1 JSON API: parse the request, call a use case, serialise the result."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from . import admin, auth, docs, events, health  # noqa: E402,F401  (routes register on import)
