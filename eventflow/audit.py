"""The audit log: who did what, when, to what and to how many. Append-only.

`record` adds the entry to the caller's unit of work, so the entry commits with the action it
describes (or not at all). Nothing in the application updates or deletes an entry.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

from sqlalchemy import func, select

from .extensions import db
from .models import AuditEntry, User
from .pages import NumberedPage

# The actor of actions taken with the `flask` command line (no user logged in there).
COMMAND_LINE = "command line"

# Every action the log records (CONTRACT §10), and what each names as its target.
ACTIONS: dict[str, str] = {
    "replay": "an event",
    "replay_all": "the DLQ, or one type of it (filter)",
    "replay_group": "an error group",
    "edit_payload": "an event",
    "bulk_replay": "a bulk action (filter)",
    "bulk_discard": "a bulk action (filter)",
    "bulk_cancel": "a bulk action",
    "error_group_status": "an error group (note: the new status)",
    "pause": "an event type",
    "resume": "an event type",
    "set_role": "a user (note: the new role)",
    "create_user": "a user (note: the role)",
}

# The same names as an enum, for the API's action filter (and its OpenAPI document).
Action = enum.StrEnum("Action", {name.upper(): name for name in ACTIONS})  # type: ignore[misc]


def record(
    actor: User | None,
    action: str,
    *,
    target: str | None = None,
    filter: dict[str, Any] | None = None,
    count: int | None = None,
    note: str | None = None,
) -> None:
    """Add an entry for this action to the current transaction (the caller commits)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    db.session.add(
        AuditEntry(
            actor_id=actor.id if actor is not None else None,
            actor=actor.email if actor is not None else COMMAND_LINE,
            action=action,
            target=target,
            filter=filter,
            count=count,
            note=note,
        )
    )


def actor_of(user_id: uuid.UUID | None) -> User | None:
    """The user acting, by id (None stays None: the command line)."""
    return db.session.get(User, user_id) if user_id is not None else None


AuditPage = NumberedPage[AuditEntry]


def list_entries(
    *, actor: str | None = None, action: str | None = None, page: int = 1, limit: int = 20
) -> AuditPage:
    """Newest first, filtered by the actor's e-mail (case-insensitive) and the action."""
    conditions = []
    if actor:
        conditions.append(func.lower(AuditEntry.actor) == actor.strip().lower())
    if action:
        conditions.append(AuditEntry.action == action)
    total = db.session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
    rows = db.session.scalars(
        select(AuditEntry)
        .where(*conditions)
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    return AuditPage(items=list(rows), page=page, limit=limit, total=total or 0)
