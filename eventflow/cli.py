"""Commands: `users create|set-role|delete|ensure-admin`, `worker`, `dlq list|replay`."""

from __future__ import annotations

import logging
import uuid

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import events, users
from .errors import ApiError
from .filters import EventFilter
from .models import Role, Status
from .schemas.parsing import parse_event_id, parse_query, validate
from .schemas.requests import DlqQuery, DlqReplay

users_cli = AppGroup("users", help="Manage user accounts.")
dlq_cli = AppGroup("dlq", help="Inspect and replay the dead-letter queue.")
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


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(dlq_cli)
    app.cli.add_command(worker)
