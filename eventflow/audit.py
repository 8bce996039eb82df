"""STAND-IN for main's audit.py."""

from __future__ import annotations

from typing import Any

from .extensions import db
from .models import AuditLog, User


def record(
    actor: User | None,
    action: str,
    *,
    target: str | None = None,
    filter: dict[str, Any] | None = None,  # noqa: A002
    count: int | None = None,
    note: str | None = None,
) -> None:
    db.session.add(
        AuditLog(
            actor_id=actor.id if actor else None,
            action=action,
            target=target,
            filter=filter,
            count=count,
            note=note,
        )
    )
