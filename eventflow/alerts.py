"""Alerts (CONTRACT section 11): four rules, evaluated every recovery interval by one process.

Each evaluation measures every rule from a few cheap reads (the counters, an index, the
heartbeats, the newest error groups), compares it with the rule's state in `alert_states`, and
queues a notice in `alert_notices` when a rule starts firing, stops firing, or is still firing
REPEAT seconds after its last notice, all in one transaction: a restart neither repeats nor
forgets a notice. eventflow/alert_webhook.py then posts the queued notices.

`new_error_group` fires once per group first seen since the previous evaluation and resolves at
the next evaluation: a new kind of failure is news once; the group itself is worked on in the
Errors page (resolve, ignore), not through the alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from .alert_webhook import send_notices
from .config import Settings
from .counts import count_events
from .extensions import db
from .models import AlertNotice, AlertState, ErrorGroup, Event, Status, Worker, utcnow
from .tasks.transitions import WAITING, not_paused

DLQ_SIZE = "dlq_size"
OLDEST_PENDING = "oldest_pending_seconds"
NO_WORKERS = "no_workers"
NEW_ERROR_GROUP = "new_error_group"
RULES = (DLQ_SIZE, OLDEST_PENDING, NO_WORKERS, NEW_ERROR_GROUP)
FIRING, RESOLVED = "firing", "resolved"
# Held by the one process that evaluates (a worker, while it lives; or `flask alerts evaluate`).
EVALUATOR_LEASE = "eventflow:alerts-lock"
# A group's row commits a moment after its first_seen: look this far behind, so that a group
# committed after one evaluation's read still falls into the next one's window.
NEW_GROUP_LAG = timedelta(seconds=1)
NEW_GROUPS_PER_EVALUATION = 20


@dataclass(frozen=True)
class Reading:
    """What a threshold rule measured: its value, whether it is over, and since when."""

    value: float | None
    over: bool
    since: datetime | None = None


def read_dlq_size(settings: Settings, now: datetime) -> Reading:
    """Events in the DLQ, from the counters (no COUNT(*))."""
    size = count_events(Status.FAILED.value).count
    return Reading(size, size > settings.alert_dlq_size)


def read_oldest_pending(settings: Settings, now: datetime) -> Reading:
    """How long the longest-waiting due event has waited (the partial index on waiting events).

    Paused types are left out: their events wait because an admin asked them to.
    """
    due = db.session.scalar(
        select(func.min(Event.next_attempt_at)).where(Event.status.in_(WAITING), not_paused())
    )
    age = max(0.0, (now - due).total_seconds()) if due is not None else 0.0
    return Reading(round(age, 3), age > settings.alert_oldest_pending_seconds, due)


def read_no_workers(settings: Settings, now: datetime) -> Reading:
    """Seconds since the last worker heartbeat. A worker that stops cleanly removes its row, so
    no row at all means none is running: that fires at once (value None)."""
    last = db.session.scalar(select(func.max(Worker.last_seen_at)))
    if last is None:
        return Reading(None, True)
    silent = max(0.0, (now - last).total_seconds())
    return Reading(round(silent, 3), silent > settings.alert_no_worker_seconds, last)


THRESHOLD_RULES: dict[str, tuple[Callable[[Settings, datetime], Reading], str]] = {
    DLQ_SIZE: (read_dlq_size, "alert_dlq_size"),
    OLDEST_PENDING: (read_oldest_pending, "alert_oldest_pending_seconds"),
    NO_WORKERS: (read_no_workers, "alert_no_worker_seconds"),
}
DASHBOARD_PAGES = {DLQ_SIZE: "/dlq", OLDEST_PENDING: "/events?status=PENDING", NO_WORKERS: "/"}


def notice_body(
    settings: Settings,
    rule: str,
    state: str,
    value: Any,
    threshold: float | None,
    since: datetime | None,
    page: str,
) -> dict[str, Any]:
    """What a notice says: {alert, state, value, threshold, since, dashboard_url}."""
    return {
        "alert": rule,
        "state": state,
        "value": value,
        "threshold": threshold,
        "since": since.isoformat().replace("+00:00", "Z") if since is not None else None,
        "dashboard_url": settings.alert_dashboard_url + page,
    }


class Evaluation:
    """One evaluation's transaction: the states it read and the notices it queues."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.now = utcnow()
        rows = db.session.scalars(select(AlertState).with_for_update()).all()
        self.states = {row.rule: row for row in rows}
        self.notices: list[dict[str, Any]] = []

    def state(self, rule: str) -> AlertState:
        if rule not in self.states:
            self.states[rule] = AlertState(rule=rule, firing=False)
            db.session.add(self.states[rule])
        return self.states[rule]

    def notify(self, body: dict[str, Any]) -> None:
        self.notices.append(body)
        if self.settings.alert_webhook_url:
            db.session.add(AlertNotice(body=body, attempts=0, next_try_at=self.now))

    def apply(self, rule: str, reading: Reading, threshold: float) -> None:
        """Move a threshold rule's state and queue its notice, if any."""
        state, now = self.state(rule), self.now
        state.value, state.threshold, state.evaluated_at = reading.value, threshold, now
        if reading.over:
            if not state.firing:
                state.firing, state.since, state.notified_at = True, reading.since or now, None
            repeat = timedelta(seconds=self.settings.alert_repeat_seconds)
            if state.notified_at is None or now - state.notified_at >= repeat:
                state.notified_at = now
                self.notify(self._body(rule, FIRING, state))
        elif state.firing:
            self.notify(self._body(rule, RESOLVED, state))
            state.firing, state.since, state.notified_at = False, None, None

    def _body(self, rule: str, kind: str, state: AlertState) -> dict[str, Any]:
        return notice_body(
            self.settings,
            rule,
            kind,
            state.value,
            state.threshold,
            state.since,
            DASHBOARD_PAGES[rule],
        )

    def apply_new_groups(self) -> None:
        """Fire once per error group first seen since the last evaluation; resolve the previous
        evaluation's groups."""
        state = self.state(NEW_ERROR_GROUP)
        for group in state.value if state.firing and state.value else []:
            self.notify(self._group_body(RESOLVED, group))
        watermark = self.now - NEW_GROUP_LAG
        groups: list[dict[str, Any]] = []
        if state.evaluated_at is not None:  # the first evaluation only starts watching
            rows = db.session.execute(
                select(ErrorGroup.id, ErrorGroup.exception, ErrorGroup.first_seen)
                .where(
                    ErrorGroup.first_seen > state.evaluated_at, ErrorGroup.first_seen <= watermark
                )
                .order_by(ErrorGroup.first_seen)
                .limit(NEW_GROUPS_PER_EVALUATION)
            ).all()
            groups = [
                {"id": row.id, "exception": row.exception, "first_seen": row.first_seen.isoformat()}
                for row in rows
            ]
            if len(rows) == NEW_GROUPS_PER_EVALUATION:
                watermark = rows[-1].first_seen  # the rest at the next evaluation
        for group in groups:
            self.notify(self._group_body(FIRING, group))
        state.firing, state.value = bool(groups), groups
        state.since = datetime.fromisoformat(groups[0]["first_seen"]) if groups else None
        # For this rule, evaluated_at is the watermark: groups first seen up to it are told.
        state.evaluated_at = watermark

    def _group_body(self, kind: str, group: dict[str, Any]) -> dict[str, Any]:
        value = {"id": group["id"], "exception": group["exception"]}
        since = datetime.fromisoformat(group["first_seen"])
        return notice_body(self.settings, NEW_ERROR_GROUP, kind, value, None, since, "/errors")


def evaluate_alerts(settings: Settings) -> list[dict[str, Any]]:
    """Evaluate every rule once, in one transaction; the notices it queued (or would have,
    without a webhook)."""
    try:
        evaluation = Evaluation(settings)
        for rule, (read, setting) in THRESHOLD_RULES.items():
            threshold = float(getattr(settings, setting))
            evaluation.apply(rule, read(settings, evaluation.now), threshold)
        evaluation.apply_new_groups()
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return evaluation.notices


def run_alerts(settings: Settings) -> int:
    """One evaluator pass: evaluate the rules, then post what is due; notices delivered."""
    evaluate_alerts(settings)
    return send_notices(settings)


@dataclass(frozen=True)
class AlertView:
    """A rule as GET /alerts and the dashboard show it."""

    alert: str
    state: str  # firing|ok
    value: Any
    threshold: float | None
    since: datetime | None


def list_alerts() -> list[AlertView]:
    """Every rule with its state as last evaluated (ok until first evaluated)."""
    states = {row.rule: row for row in db.session.scalars(select(AlertState))}
    views = []
    for rule in RULES:
        row = states.get(rule)
        if row is None:
            views.append(AlertView(rule, "ok", None, None, None))
        else:
            state = FIRING if row.firing else "ok"
            views.append(AlertView(rule, state, row.value, row.threshold, row.since))
    return views


def firing_alerts() -> list[AlertView]:
    """The rules firing now: one read of a four-row table (every dashboard page shows them)."""
    rows = db.session.scalars(
        select(AlertState).where(AlertState.firing.is_(True)).order_by(AlertState.rule)
    )
    return [AlertView(row.rule, FIRING, row.value, row.threshold, row.since) for row in rows]
