"""The audit log, read-only: who did what (admins and viewers)."""

from .. import audit
from ..schemas.requests import AuditQuery
from ..schemas.responses import AuditEntryView, AuditPage
from . import bp
from .admin import STAFF_ERRORS
from .inputs import staff_required
from .operation import operation


@bp.get("/audit")
@staff_required
@operation(
    "The audit log: every replay, bulk action, edit, status change, pause and user change",
    tag="audit",
    auth="access",
    query=AuditQuery,
    responses={200: AuditPage},
    errors={**STAFF_ERRORS, 400: "invalid_page, invalid_limit, invalid_user, invalid_action."},
    description="Newest first. Append-only: no route changes or deletes an entry.",
)
def list_audit(query: AuditQuery) -> AuditPage:
    found = audit.list_entries(
        actor=query.actor, action=query.action, page=query.page, limit=query.limit
    )
    return AuditPage(
        items=[AuditEntryView.model_validate(entry) for entry in found.items],
        page=found.page,
        limit=found.limit,
        total=found.total,
        pages=found.pages,
    )
