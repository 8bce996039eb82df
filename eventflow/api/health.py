"""GET /health (and /api/v1/health): real checks of the database and the queue."""

from flask import Blueprint

from ..health import check_health
from . import bp as api_bp

bp = Blueprint("health", __name__)


@bp.get("/health")
@api_bp.get("/health")
def health():
    report = check_health()
    return report, 200 if report["status"] == "ok" else 503
