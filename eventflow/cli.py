"""Commands: `users create|set-role|delete|ensure-admin`, `worker`, `dlq list|replay`,
`events purge`, `types list|pause|resume`, `alerts evaluate`."""

from __future__ import annotations

import logging
import os
import re
import uuid
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import alerts, event_types, events, retention, users
from .backend import backend_of
from .errors import ApiError
from .filters import EventFilter
from .models import Role, Status
from .schemas.parsing import parse_event_id, parse_query, validate
from .schemas.requests import DlqQuery, DlqReplay, TypePath

users_cli = AppGroup("users", help="Manage user accounts.")
dlq_cli = AppGroup("dlq", help="Inspect and replay the dead-letter queue.")
events_cli = AppGroup("events", help="Maintain the events table.")
types_cli = AppGroup("types", help="Pause and resume event types; show their state.")
alerts_cli = AppGroup("alerts", help="Evaluate the alert rules.")
DEFAULT_ADMIN_EMAIL = "admin@example.com"


def _fail(exc: ApiError) -> None:
    raise click.ClickException(exc.message)


@users_cli.command("create")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Give the user the admin role (same as --role admin).")
@click.option(
    "--role",
    type=click.Choice([role.value for role in Role]),
    default=None,
    help="viewer: sees everything, changes nothing; user: its own events; admin: everything.",
)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The password (prompted for when not given).",
)
def create_user(email: str, admin: bool, role: str | None, password: str) -> None:
    """Create a user account."""
    if admin and role not in (None, Role.ADMIN.value):
        raise click.UsageError("--admin and --role must agree (or give only one)")
    try:
        user = users.create_user(email, password, admin=admin, role=role)
    except ApiError as exc:
        _fail(exc)
    click.echo(f"created {user.role} {user.email} ({user.id})")


@users_cli.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice([role.value for role in Role]))
def set_role(email: str, role: str) -> None:
    """Change a user's role; their tokens and sessions get it on their next request."""
    try:
        user = users.set_role(email, role)
    except ApiError as exc:
        _fail(exc)
    click.echo(f"{user.email} is now {user.role}")


@users_cli.command("delete")
@click.argument("email")
@click.confirmation_option(prompt="Delete this user and all of their events?")
def delete_user(email: str) -> None:
    """Delete a user and their events; their tokens stop working at once."""
    try:
        removed = users.delete_user(email)
    except ApiError as exc:
        _fail(exc)
    click.echo(f"deleted {email} and {removed} event(s)")


@users_cli.command("ensure-admin")
@click.option("--email", default=DEFAULT_ADMIN_EMAIL, show_default=True)
def ensure_admin(email: str) -> None:
    """Create an admin with a random password unless one exists; print its credentials."""
    try:
        user, password = users.ensure_admin(email)
    except ApiError as exc:
        _fail(exc)
    if password:
        click.echo(f"Admin created: {user.email} / password: {password}")
        click.echo("(shown once: change it with `flask --app wsgi users create` for a new admin)")
    else:
        click.echo(f"Admin account: {user.email}")


@click.command("worker")
@click.option("--workers", "-w", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--processes", is_flag=True, help="Use processes instead of threads.")
def worker(workers: int, processes: bool) -> None:
    """Run a Huey consumer; SIGTERM or Ctrl-C finish in-flight events, then exit."""
    from .logs import configure_logging
    from .tasks.queue import processor_of
    from .tasks.worker import run_worker

    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxied app
    settings = app.config["EVENTFLOW"]
    configure_logging(settings.log_format)
    # The consumer's start and stop; Huey's two lines per task stay out (WARNING): they say
    # less than our line per attempt (tasks/processing.py).
    logging.getLogger("huey.consumer").setLevel(logging.INFO)
    run_worker(app, processor_of(app), workers, processes)


@dlq_cli.command("list")
@click.option("--type", "event_type", default=None, help="Only events of this type.")
@click.option("--limit", default="50", show_default=True)
def dlq_list(event_type: str | None, limit: str) -> None:
    """List the FAILED events, newest first."""
    try:
        args = {"limit": limit} if event_type is None else {"limit": limit, "type": event_type}
        query = parse_query(DlqQuery, args)
        page = events.list_events(
            # An admin of no account (the nil id): admins' listings filter by no user.
            events.Viewer(user_id=uuid.UUID(int=0), role=Role.ADMIN.value),
            EventFilter(status=Status.FAILED, type=query.type),
            limit=query.limit,
        )
    except ApiError as exc:
        _fail(exc)
    click.echo(f"{page.total} event(s) in the DLQ")
    for event in page.items:
        click.echo(
            f"{event.id}  {event.type:<24} attempts={event.attempts}  {event.last_error or ''}"
        )


@dlq_cli.command("replay")
@click.argument("event_id", required=False)
@click.option("--type", "event_type", default=None, help="Replay only events of this type.")
def dlq_replay(event_id: str | None, event_type: str | None) -> None:
    """Replay one DLQ event by id, or every DLQ event (of a type)."""
    try:
        if event_id:
            events.replay_event(parse_event_id(event_id), None)
            click.echo(f"replayed {event_id}")
        else:
            replay = validate(DlqReplay, {"type": event_type}, "body")
            click.echo(f"replayed {events.replay_dlq(None, replay.type)} event(s)")
    except ApiError as exc:
        _fail(exc)


class Age(click.ParamType[timedelta]):
    """An age like 30d, 12h or 90m: a whole number of days, hours or minutes."""

    name = "age"
    UNITS = {"d": "days", "h": "hours", "m": "minutes"}
    PATTERN = re.compile(r"^\s*([1-9][0-9]{0,5})\s*([dhm])\s*$")

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = self.PATTERN.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not an age like 30d, 12h or 90m", param, ctx)
        return timedelta(**{self.UNITS[match.group(2)]: int(match.group(1))})


class StatusList(click.ParamType[tuple[Status, ...]]):
    """Comma-separated event statuses, e.g. PROCESSED,DISCARDED."""

    name = "statuses"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[Status, ...]:
        if isinstance(value, tuple):
            return value
        names = [name.strip().upper() for name in str(value).split(",") if name.strip()]
        unknown = [name for name in names if name not in Status.__members__]
        if unknown or not names:
            known = ", ".join(Status.__members__)
            self.fail(f"{value!r} is not a list of statuses ({known})", param, ctx)
        return tuple(Status[name] for name in names)


@events_cli.command("purge")
@click.option("--older-than", "older_than", type=Age(), required=True, help="e.g. 30d, 12h, 90m")
@click.option(
    "--status",
    "statuses",
    type=StatusList(),
    default=",".join(s.value for s in retention.DEFAULT_STATUSES),
    show_default=True,
    help="Which finished events to delete; FAILED (the DLQ) only when named.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, retention.MAX_BATCH),
    default=retention.MAX_BATCH,
    show_default=True,
    help="Events deleted per transaction.",
)
def purge(
    older_than: timedelta, statuses: tuple[Status, ...], dry_run: bool, batch_size: int
) -> None:
    """Delete finished events (and their attempts) created longer ago than --older-than."""
    try:
        report = retention.purge_events(
            older_than, statuses, dry_run=dry_run, batch_size=batch_size
        )
    except ApiError as exc:
        _fail(exc)
    line = report.describe()
    click.echo(line[0].upper() + line[1:])


def _describe_type(view: event_types.TypeView) -> str:
    state = (
        f"paused by {view.paused_by} at {view.paused_at:%Y-%m-%d %H:%M:%S}Z"
        if view.paused
        else "running"
    )
    counts = " ".join(f"{status}={n}" for status, n in view.counts.items())
    return f"{view.type:<24} {state}  max_attempts={view.policy.max_attempts}  {counts}"


@types_cli.command("list")
def types_list() -> None:
    """Every type with a handler, events, or a pause: its state, policy and counts."""
    for view in event_types.list_types():
        click.echo(_describe_type(view))


@types_cli.command("pause")
@click.argument("event_type")
def types_pause(event_type: str) -> None:
    """Pause a type: its events are accepted and wait; no worker takes them."""
    try:
        name = validate(TypePath, {"event_type": event_type}, "path").event_type
    except ApiError as exc:
        _fail(exc)
    click.echo(_describe_type(event_types.pause_type(None, name)))


@types_cli.command("resume")
@click.argument("event_type")
def types_resume(event_type: str) -> None:
    """Resume a paused type: its waiting events go to the workers."""
    try:
        name = validate(TypePath, {"event_type": event_type}, "path").event_type
    except ApiError as exc:
        _fail(exc)
    view, sent = event_types.resume_type(None, name)
    click.echo(_describe_type(view))
    click.echo(f"{sent} waiting event(s) sent to the workers")


@alerts_cli.command("evaluate")
def evaluate_alerts() -> None:
    """Evaluate the rules once and post the due notices (the workers do it every interval;
    run this from cron too, so that `no_workers` is told when no worker is left to tell it)."""
    # The workers' evaluator holds this lease while it lives: one evaluator, one outbox order.
    shared, me = backend_of(current_app).broker.shared, f"cli-{os.getpid()}"
    if not shared.hold(alerts.EVALUATOR_LEASE, me, 60_000):
        click.echo("a worker is evaluating the alerts: nothing to do here")
        return  # not an error: cron runs this every minute, and workers usually answer
    try:
        sent = alerts.run_alerts(current_app.config["EVENTFLOW"])
    finally:
        shared.release(alerts.EVALUATOR_LEASE, me)
    for view in alerts.list_alerts():
        click.echo(f"{view.alert}: {view.state} (value {view.value}, threshold {view.threshold})")
    click.echo(f"{sent} notice(s) posted")


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(dlq_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(types_cli)
    app.cli.add_command(alerts_cli)
    app.cli.add_command(worker)
