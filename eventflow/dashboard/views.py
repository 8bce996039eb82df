"""Dashboard pages: parse the query, call a use case, render a page or an htmx fragment."""

from __future__ import annotations

from typing import Any

from flask import (
    Response,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded
from flask_wtf.csrf import CSRFError

from .. import audit, events, ingest, users
from ..errors import ApiError, retry_after_seconds
from ..infrastructure import read_infrastructure
from ..models import Status
from ..schemas.parsing import parse_event_id, parse_json, parse_query, validate
from ..schemas.requests import AuditQuery, DlqReplay, EventQuery
from ..security import limit_failed_logins
from ..stats import snapshot
from ..tasks.queue import QUEUE_ERRORS, get_queue
from . import bp, search
from .access import (
    is_background_request,
    log_in,
    log_out,
    refuse,
    safe_next,
    session_user,
    wants_fragment,
)
from .formatting import register_filters
from .history import chosen_range, history_for_page

PUBLIC_ENDPOINTS = {"dashboard.login_form", "dashboard.login"}
PAGE_SIZES = (25, 50, 100)
DEFAULT_PAGE_SIZE = PAGE_SIZES[0]
STATUSES = [status.value for status in Status]
# Statuses an event leaves on its own: its detail page refreshes itself while in one of them.
IN_FLIGHT = {Status.PENDING.value, Status.PROCESSING.value, Status.RETRYING.value}

register_filters(bp)


# Actions a viewer may take: only ending their own session.
VIEWER_ACTIONS = {"dashboard.logout"}


@bp.before_request
def require_staff() -> ResponseReturnValue | None:
    """Admins and viewers see every page; only admins act (every other POST is an action)."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    user = session_user()
    if user is None:
        return refuse()
    g.user = user
    g.can_act = user.is_admin
    if request.method == "POST" and not g.can_act and request.endpoint not in VIEWER_ACTIONS:
        raise ApiError(
            403, "forbidden", "You have the viewer role: you can see everything and change nothing."
        )
    return None


@bp.after_request
def never_cache(response: Response) -> Response:
    # Pages hold live data, and the same URL answers htmx with a fragment: never cache either.
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("HX-Request")
    return response


def _viewer() -> events.Viewer:
    return events.Viewer(user_id=g.user.id, role=g.user.role)


# --- login -----------------------------------------------------------------------------------


@bp.get("/login")
def login_form() -> ResponseReturnValue:
    if session_user() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("dashboard/login.html", next=request.args.get("next", ""))


def _login_error(message: str, status: int) -> tuple[str, int]:
    form = request.form
    page = render_template(
        "dashboard/login.html", error=message, email=form.get("email", ""), next=form.get("next")
    )
    return page, status


@bp.post("/login")
@limit_failed_logins("form")
def login() -> ResponseReturnValue:
    form = request.form
    try:
        user = users.authenticate(form.get("email", ""), form.get("password", ""))
    except ApiError:
        return _login_error("Invalid email or password.", 401)
    if not user.is_staff:
        return _login_error(
            "This account cannot use the dashboard: it is for admins and viewers only.", 403
        )
    log_in(user)
    return redirect(safe_next(form.get("next")))


@bp.errorhandler(RateLimitExceeded)
def show_rate_limited(exc: RateLimitExceeded) -> ResponseReturnValue:
    seconds = retry_after_seconds(exc)
    message = f"Too many failed login attempts. Try again in {seconds} seconds."
    page, status = _login_error(message, 429)
    return page, status, {"Retry-After": str(seconds)}


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    log_out()
    flash("You are logged out.", "success")
    return redirect(url_for("dashboard.login_form"))


# --- pages -----------------------------------------------------------------------------------


@bp.get("/")
def overview() -> ResponseReturnValue:
    try:
        stats = snapshot(get_queue().stats)
    except QUEUE_ERRORS:
        stats = None  # the page still loads; the live feed fills it in when the queue is back
    history_range = chosen_range()
    return render_template(
        "dashboard/overview.html",
        stats=stats,
        infra=read_infrastructure(),
        history_range=history_range,
        history=history_for_page(history_range),
    )


@bp.get("/infrastructure")
def show_infrastructure() -> ResponseReturnValue:
    """The Overview's infrastructure panel, which polls this every few seconds."""
    if not wants_fragment():
        return redirect(url_for("dashboard.overview"))
    return render_template("dashboard/partials/infrastructure.html", infra=read_infrastructure())


def _filters(names: tuple[str, ...]) -> dict[str, str]:
    return {name: request.args.get(name, "").strip() for name in names}


def _page_of_events(filters: dict[str, str], **fixed: str) -> tuple[events.Page | None, str | None]:
    """(page, error): a page of events for the filters, or the reason they are not valid."""
    args = {
        "page": request.args.get("page"),
        "limit": filters.get("limit") or str(DEFAULT_PAGE_SIZE),
    }
    try:
        args.update(search.query_arguments({**filters, **fixed}))
        # A form's empty field is no filter.
        query = parse_query(EventQuery, {k: v for k, v in args.items() if v})
        page = events.list_events(_viewer(), query.to_filter(), limit=query.limit, page=query.page)
    except ApiError as exc:
        if exc.code == "page_too_deep":
            return None, _too_deep_message(filters)
        return None, search.MESSAGES.get(exc.code, exc.message)
    return page, None


def _too_deep_message(filters: dict[str, str]) -> str:
    """Why a page is refused, in the dashboard's terms (the API's points to cursor paging)."""
    size = int(filters.get("limit") or DEFAULT_PAGE_SIZE)
    return (
        f"Page {int(request.args['page']):,} is too deep: the list reaches back "
        f"{events.MAX_PAGE_DEPTH:,} events ({events.MAX_PAGE_DEPTH // size:,} pages of {size}). "
        "Narrow it with the filters to find older events."
    )


def _shareable_url(endpoint: str, filters: dict[str, str], page_no: int = 1) -> str:
    """The listing's URL with only the filters in use, so it reads well and can be shared;
    payload filters as payload.<path>=<value>."""
    args: dict[str, Any] = {
        k: v
        for k, v in filters.items()
        if v and k != "payload" and not (k == "limit" and v == str(DEFAULT_PAGE_SIZE))
    }
    if filters.get("payload"):
        try:
            args.update(search.payload_arguments(filters["payload"]))
        except ApiError:
            args["payload"] = filters["payload"]  # the page says what is wrong with it
    if page_no > 1:
        args["page"] = page_no
    return url_for(endpoint, **args)


def _render_listing(
    template: str,
    fragment: str,
    endpoint: str,
    filters: dict[str, str],
    page: events.Page | None,
    error: str | None,
    **extra: object,
) -> ResponseReturnValue:
    context: dict[str, Any] = dict(
        filters=filters,
        filtered=any(v for k, v in filters.items() if k != "limit"),
        page=page,
        error=error,
        emails=users.user_emails(e.user_id for e in page.items) if page else {},
        page_sizes=PAGE_SIZES,
        url=_shareable_url(endpoint, filters, page.page or 1 if page else 1),
        page_url=lambda n: _shareable_url(endpoint, filters, n),
        **extra,
    )
    status = 400 if error else 200
    if not wants_fragment():
        return render_template(template, **context), status
    response = make_response(render_template(fragment, **context), status)
    response.headers["HX-Push-Url"] = context["url"]
    return response


@bp.get("/events")
def list_events() -> ResponseReturnValue:
    filters = {**search.read_filters(request.args), **_filters(("limit",))}
    page, error = _page_of_events(filters)
    return _render_listing(
        "dashboard/events.html",
        "dashboard/partials/events_results.html",
        "dashboard.list_events",
        filters,
        page,
        error,
        statuses=STATUSES,
        times={name: search.field_time(filters[name]) for name in search.TIMES},
        without_group=_shareable_url("dashboard.list_events", {**filters, "error_group": ""}),
    )


@bp.get("/events/<event_id>")
def show_event(event_id: str) -> ResponseReturnValue:
    event = events.get_event(_viewer(), parse_event_id(event_id))
    versions = events.list_payload_versions(event.id)
    context = dict(
        event=event,
        attempts=events.list_attempts(event.id),
        owner=users.user_emails([event.user_id]).get(event.user_id),
        in_flight=event.status in IN_FLIGHT,
        versions=versions,
        editors=users.user_emails(v.replaced_by for v in versions if v.replaced_by),
    )
    if wants_fragment():
        return render_template("dashboard/partials/event_detail.html", **context)
    return render_template("dashboard/event.html", **context)


@bp.get("/dlq")
def list_dlq() -> ResponseReturnValue:
    filters = _filters(("type", "limit"))
    page, error = _page_of_events(filters, status=Status.FAILED.value)
    return _render_listing(
        "dashboard/dlq.html",
        "dashboard/partials/dlq_list.html",
        "dashboard.list_dlq",
        filters,
        page,
        error,
        types=events.count_dlq_by_type(),
    )


@bp.get("/audit")
def list_audit() -> ResponseReturnValue:
    filters = _filters(("actor", "action"))
    try:
        args = {k: v for k, v in filters.items() if v}
        query = parse_query(AuditQuery, {**args, "page": request.args.get("page") or "1"})
        found, error = (
            audit.list_entries(
                actor=query.actor, action=query.action, page=query.page, limit=DEFAULT_PAGE_SIZE
            ),
            None,
        )
    except ApiError as exc:
        found, error = None, exc.message
    template = "partials/audit_results.html" if wants_fragment() else "audit.html"
    page = render_template(
        f"dashboard/{template}",
        filters=filters,
        page=found,
        error=error,
        actions=audit.ACTIONS,
        page_url=lambda n: _shareable_url("dashboard.list_audit", filters, n),
    )
    return page, 400 if error else 200


# --- actions ---------------------------------------------------------------------------------


def _outcome(
    message: str, *, level: str = "success", status: int = 200, link: str | None = None
) -> ResponseReturnValue:
    """Tell the admin what an action did: a fragment for htmx, else a flash and a redirect."""
    if wants_fragment():
        body = render_template(
            "dashboard/partials/outcome.html", message=message, level=level, link=link
        )
        # Lists and detail panels listen for these and reload themselves.
        headers = {"HX-Trigger": "dlq-changed, event-changed"} if status < 400 else {}
        return body, status, headers
    flash(message, level)
    return redirect(safe_next(request.form.get("next")), code=303)


@bp.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> ResponseReturnValue:
    try:
        replayed = events.replay_event(parse_event_id(event_id), g.user)
    except ApiError as exc:
        return _outcome(exc.message, level="error", status=exc.status)
    link = url_for("dashboard.show_event", event_id=replayed)
    return _outcome(f"Event {replayed} is back in the queue.", link=link)


@bp.post("/events/<event_id>/edit")
def edit_and_replay(event_id: str) -> ResponseReturnValue:
    try:
        edited = parse_json(request.form.get("payload", "").encode())
        payload = ingest.validate_edited_payload({"payload": edited})
        if payload is None:
            raise ApiError(400, "invalid_payload", "payload must be a JSON object")
        replayed = events.edit_and_replay(parse_event_id(event_id), payload, g.user)
    except ApiError as exc:
        return _outcome(exc.message, level="error", status=exc.status)
    link = url_for("dashboard.show_event", event_id=replayed)
    return _outcome(f"Event {replayed} is back in the queue with the edited payload.", link=link)


@bp.post("/dlq/replay")
def replay_dlq() -> ResponseReturnValue:
    event_type = request.form.get("type", "").strip() or None
    try:
        count = events.replay_dlq(g.user, validate(DlqReplay, {"type": event_type}, "body").type)
    except ApiError as exc:
        return _outcome(exc.message, level="error", status=exc.status)
    of_type = f" of type {event_type}" if event_type else ""
    if count == 0:
        return _outcome(f"Nothing to replay: the DLQ holds no events{of_type}.", level="info")
    noun = "event" if count == 1 else "events"
    return _outcome(f"Replayed {count:,} {noun}{of_type}: they are back in the queue.")


# --- errors ----------------------------------------------------------------------------------


@bp.errorhandler(ApiError)
def show_api_error(exc: ApiError) -> ResponseReturnValue:
    if wants_fragment():
        return _outcome(exc.message, level="error", status=exc.status)
    if is_background_request():
        # The message may quote the request (an unknown id): plain text, so no browser renders it.
        return exc.message, exc.status, {"Content-Type": "text/plain; charset=utf-8"}
    page = render_template("dashboard/error.html", message=exc.message, status=exc.status)
    return page, exc.status


@bp.errorhandler(CSRFError)
def show_csrf_error(_exc: CSRFError) -> ResponseReturnValue:
    message = "This form has expired (missing or stale CSRF token): reload the page and try again."
    if request.endpoint == "dashboard.login":
        return _login_error(message, 400)
    if wants_fragment():
        return _outcome(message, level="error", status=400)
    return render_template("dashboard/error.html", message=message, status=400), 400
