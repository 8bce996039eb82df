"""GET /health (and /api/v1/health): real checks of the database and the queue."""

from typing import Any

from flask import Blueprint

from ..health import check_health
from ..schemas.responses import HealthReport
from . import bp as api_bp
from .operation import operation

bp = Blueprint("health", __name__)


@bp.get("/health")
@api_bp.get("/health")
@operation(
    "Whether the database and the queue answer",
    tag="operations",
    responses={200: HealthReport, 503: HealthReport},
    description="503 with status degraded names the failing check.",
)
def health() -> tuple[dict[str, Any], int]:
    report = check_health()
    return report, 200 if report["status"] == "ok" else 503
