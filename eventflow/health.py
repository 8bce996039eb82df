"""Dependency checks for /health."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from .extensions import db
from .tasks.queue import get_queue

logger = logging.getLogger(__name__)


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:
        logger.warning("health check failed: %s", exc)
        return f"error: {type(exc).__name__}"


def _ping_database() -> None:
    try:
        db.session.execute(text("SELECT 1"))
    finally:
        db.session.rollback()


def check_health() -> dict[str, Any]:
    """{"status": "ok"|"degraded", "checks": {"database": ..., "queue": ...}}"""
    checks = {"database": _check(_ping_database), "queue": _check(get_queue().ping)}
    status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
    return {"status": status, "checks": checks}
