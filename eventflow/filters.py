"""STAND-IN for main's filters.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, String, cast, func, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB

from .models import Event, Status, User
from .schemas.rules import parse_uuid

if TYPE_CHECKING:
    from .events import Viewer

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class EventFilter:
    status: Status | str | None = None
    type: str | None = None
    user: str | None = None
    error_group: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    id_prefix: str | None = None
    payload: tuple[tuple[str, Scalar], ...] = ()


def conditions(f: EventFilter, viewer: Viewer) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if not viewer.sees_all:
        out.append(Event.user_id == viewer.user_id)
    if f.status:
        out.append(Event.status == str(f.status))
    if f.type:
        out.append(Event.type == f.type)
    if f.user and viewer.sees_all:
        user_id = parse_uuid(f.user)
        if user_id is not None:
            out.append(Event.user_id == user_id)
        else:
            out.append(
                Event.user_id.in_(
                    select(User.id).where(func.lower(User.email) == f.user.strip().lower())
                )
            )
    if f.error_group is not None:
        out.append(Event.error_group_id == f.error_group)
    if f.created_after:
        out.append(Event.created_at >= f.created_after)
    if f.created_before:
        out.append(Event.created_at < f.created_before)
    if f.id_prefix:
        out.append(cast(Event.id, String).like(f.id_prefix + "%"))
    for path, value in f.payload:
        nested: object = value
        for key in reversed(path.split(".")):
            nested = {key: nested}
        out.append(type_coerce(Event.payload, JSONB).contains(nested))
    return out
