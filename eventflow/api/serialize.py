"""JSON shapes of the API's resources."""

from __future__ import annotations

from datetime import UTC, datetime

from ..events import Page
from ..models import Event


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z suffix."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_to_dict(event: Event) -> dict:
    return {
        "id": str(event.id),
        "type": event.type,
        "payload": event.payload,
        "status": event.status,
        "result": event.result,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "created_at": iso(event.created_at),
        "processed_at": iso(event.processed_at),
    }


def page_to_dict(page: Page) -> dict:
    """A numbered page with its total, or a page after a cursor without one (nothing counted)."""
    items = [event_to_dict(e) for e in page.items]
    if page.page is None:
        return {"items": items, "limit": page.limit, "next_cursor": page.next_cursor}
    return {
        "items": items,
        "page": page.page,
        "limit": page.limit,
        "total": page.total,
        "pages": page.pages,
        "next_cursor": page.next_cursor,
    }
