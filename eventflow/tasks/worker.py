"""The worker process: a Huey consumer, plus a heartbeat, the periodic recovery pass and the
periodic purge (retention)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from flask import Flask
from sqlalchemy import delete

from .. import alert_webhook
from ..alerts import EVALUATOR_LEASE, run_alerts
from ..backend import SharedState
from ..config import Settings
from ..extensions import db
from ..models import Worker, utcnow
from ..retention import run_retention
from . import transitions
from .processing import MAX_BATCH, Processor, worker_id
from .queue import EventQueue
from .recovery import recover

logger = logging.getLogger(__name__)
RECOVERY_LOCK = "eventflow:recovery-lock"
RETENTION_LOCK = "eventflow:retention-lock"
# Held while a purge runs, renewed after every batch (one batch takes well under this).
RETENTION_LEASE_MS = 60_000


class Heartbeat:
    """One thread per process: says this worker is alive and keeps its claims' locks fresh."""

    def __init__(self, app: Flask, processor: Processor, concurrency: int):
        self.app = app
        self.in_flight = processor.in_flight
        self.concurrency = concurrency
        # Refresh well inside the visibility timeout so a live worker is never taken for dead.
        self.interval = min(2.0, processor.settings.visibility_timeout_seconds / 3)
        self.started_at = utcnow()
        self._pid: int | None = None
        self._stop = threading.Event()

    def ensure_started(self) -> None:
        """Start the thread in this process if it is not running here yet (safe after fork)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="eventflow-heartbeat", daemon=True).start()

    def beat(self) -> None:
        me = worker_id()
        ids = self.in_flight.ids()
        transitions.refresh_locks(ids, me)
        db.session.merge(
            Worker(
                id=me,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
                started_at=self.started_at,
                last_seen_at=utcnow(),
                in_flight=len(ids),
                current_events=" ".join(str(i) for i in ids[:MAX_BATCH]) or None,
                processed=self.in_flight.processed,
            )
        )
        db.session.commit()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.app.app_context():
                try:
                    self.beat()
                except Exception:
                    db.session.rollback()
                    logger.warning("heartbeat failed", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop beating and remove this process's row so it no longer counts as alive."""
        self._stop.set()
        with self.app.app_context():
            try:
                db.session.execute(delete(Worker).where(Worker.id == worker_id()))
                db.session.commit()
            except Exception:
                db.session.rollback()
                logger.warning("could not remove worker row", exc_info=True)


def _recovery_loop(
    app: Flask, queue: EventQueue, settings: Settings, stop: threading.Event
) -> None:
    interval = settings.recovery_interval_seconds
    while not stop.wait(interval):
        with app.app_context():
            try:
                # With several worker hosts, one recovery pass per interval is enough: the lock
                # lapses before the next interval, so any live worker may take the next pass.
                lock_ms = max(1, int(interval * 900))
                if not queue.broker.shared.hold(RECOVERY_LOCK, worker_id(), lock_ms):
                    continue
                recover(queue, settings)
            except Exception:
                db.session.rollback()
                logger.exception("recovery pass failed")


def _alerts_loop(
    app: Flask, shared: SharedState, settings: Settings, stop: threading.Event
) -> None:
    """Evaluate the alert rules and post their notices every recovery interval, by one worker.

    Its holder keeps the lease while it lives (renewed each pass), so one process posts the
    outbox in order; it outlasts a pass's slowest webhook call, and lapses soon after the
    holder dies, when another worker takes over. What it had not posted waits in the outbox.
    """
    interval = settings.recovery_interval_seconds
    lease_ms = int(max(3 * interval, 4 * alert_webhook.TIMEOUT_SECONDS) * 1000)
    while not stop.wait(interval):
        with app.app_context():
            try:
                if shared.hold(EVALUATOR_LEASE, worker_id(), lease_ms):
                    run_alerts(settings)
            except Exception:
                db.session.rollback()
                logger.exception("alert evaluation failed")
    try:  # a worker stopping hands the evaluation over at once, not when its lease lapses
        shared.release(EVALUATOR_LEASE, worker_id())
    except Exception:
        logger.warning("could not release the alerts lease", exc_info=True)


def _retention_loop(
    app: Flask, shared: SharedState, settings: Settings, stop: threading.Event
) -> None:
    """Purge old finished events once per retention interval, by one worker of all of them.

    The lease keeps a second worker from starting while one purges; the database's record of
    the last run (retention.claim_run) decides whether a run is due, so a restart, a flushed
    Redis or the embedded default (whose lease no other process sees) never runs it twice.
    """
    me = worker_id()

    def renew() -> bool:
        return shared.hold(RETENTION_LOCK, me, RETENTION_LEASE_MS)

    while not stop.wait(
        min(settings.recovery_interval_seconds, settings.retention_interval_seconds)
    ):
        with app.app_context():
            try:
                if not renew():
                    continue
                try:
                    run_retention(
                        settings.retention_days,
                        settings.retention_interval_seconds,
                        after_batch=renew,
                    )
                finally:
                    shared.release(RETENTION_LOCK, me)
            except Exception:
                db.session.rollback()
                logger.exception("retention run failed")


def run_worker(app: Flask, processor: Processor, workers: int, processes: bool) -> None:
    """Run until SIGTERM or Ctrl-C; both let in-flight events finish before exiting."""
    queue, settings = processor.queue, processor.settings
    huey = queue.huey
    heartbeat = Heartbeat(app, processor, workers if not processes else 1)

    def start_worker() -> None:
        if processes:
            # A forked child must not share the parent's database connections.
            with app.app_context():
                db.engine.dispose(close=False)
            # Ctrl-C reaches the whole process group, and Huey makes SIGINT interrupt a child's
            # running task: the parent alone decides, and its stop lets in-flight events finish.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        heartbeat.ensure_started()

    def stop_worker() -> None:
        heartbeat.stop()
        queue.history.flush()  # this process's counts since its last flush

    huey.on_startup("eventflow")(start_worker)
    if processes:
        huey.on_shutdown("eventflow")(stop_worker)

    consumer = huey.create_consumer(
        workers=workers,
        worker_type="process" if processes else "thread",
        periodic=False,
        graceful_signal="TERM",
        initial_delay=0.05,
        max_delay=0.5,  # polling cap for a queue that cannot block (Huey's SQLite queue)
    )
    # Ctrl-C is graceful too (as SIGTERM): a second Ctrl-C stops at once.
    consumer._signal_actions[signal.SIGINT] = (False, True)

    stop = threading.Event()
    recovery = threading.Thread(
        target=_recovery_loop,
        args=(app, queue, settings, stop),
        name="eventflow-recovery",
        daemon=True,
    )
    recovery.start()
    threading.Thread(
        target=_alerts_loop,
        args=(app, queue.broker.shared, settings, stop),
        name="eventflow-alerts",
        daemon=True,
    ).start()
    if settings.retention_days:
        logger.info(
            "retention: finished events older than %d day(s) purged every %gs",
            settings.retention_days,
            settings.retention_interval_seconds,
        )
        threading.Thread(
            target=_retention_loop,
            args=(app, queue.broker.shared, settings, stop),
            name="eventflow-retention",
            daemon=True,
        ).start()
    logger.info(
        "worker %s: %d %s, recovery every %gs, visibility timeout %gs",
        worker_id(),
        workers,
        "processes" if processes else "threads",
        settings.recovery_interval_seconds,
        settings.visibility_timeout_seconds,
    )
    try:
        consumer.run()
    finally:
        stop.set()
        if not processes:
            stop_worker()
