"""The admin dashboard: server-rendered pages (views.py) and the live Socket.IO feed (live.py)."""

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

from . import (  # noqa: E402,F401  (routes register on import)
    banner,
    bulk,
    error_groups,
    history,
    types,
    views,
)
