"""The Huey queue. Messages carry only an event id; the database holds everything else."""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from flask import Flask, current_app
from huey import Huey
from huey.serializer import Serializer

from ..backend import Backend, Database
from ..config import Settings
from ..models import HISTORY_COUNTS
from .history import History, init_history
from .processing import Processor
from .registry import load_handlers

logger = logging.getLogger(__name__)

QUEUE_KEY = "eventflow.queue"
PROCESSOR_KEY = "eventflow.processor"
# What an unreachable queue raises, whichever the broker (eventflow/backend.py).
QUEUE_ERRORS = (redis.RedisError, sqlite3.Error, OSError)


_ID_LENGTH = len(str(uuid.UUID(int=0)))


def message_writer(huey: Huey, process_task: Any) -> Callable[[str], bytes]:
    """A function that writes Huey's queue message for process_event(<event id>).

    Huey builds a task object, a message tuple and a pickle for every message: a tenth of the
    CPU an ingest costs. The message of one event differs from the next only in its task id and
    its argument, two 36-character strings, so the pickle is made once with two markers of that
    length in their places and each message is the template with the two ids written over them
    (same length, so the pickle stays valid). A serializer that signs or compresses messages
    gets Huey's own path.
    """

    def hueys_own(event_id: str) -> bytes:
        message: bytes = huey.serialize_task(process_task.s(event_id))
        return message

    serializer = huey.serializer
    if type(serializer) is not Serializer or serializer.comp:
        return hueys_own
    task_marker, event_marker = "T" * _ID_LENGTH, "E" * _ID_LENGTH
    task = process_task.s(event_marker)
    task.id = task_marker
    template = huey.serialize_task(task)
    head, rest = template.split(task_marker.encode())
    middle, tail = rest.split(event_marker.encode())

    def write(event_id: str) -> bytes:
        if len(event_id) != _ID_LENGTH or not event_id.isascii():
            return hueys_own(event_id)
        task_id = os.urandom(18).hex()[:_ID_LENGTH]  # unique; Huey only compares task ids
        return b"".join((head, task_id.encode(), middle, event_id.encode(), tail))

    return write


class EventQueue:
    """Sends event ids to the workers and feeds the live counters in the same round trip."""

    def __init__(self, backend: Backend, process_task: Any, history: History) -> None:
        self.broker = backend.broker
        self.database: Database = backend.database
        self.huey = backend.broker.huey
        self.stats = backend.broker.counters
        self.history = history  # per minute and type, in the database (tasks/history.py)
        self.process_task = process_task  # a huey TaskWrapper (untyped)
        self._message = message_writer(self.huey, process_task)

    def enqueue(
        self,
        event_ids: Iterable[uuid.UUID | str],
        *,
        event_types: Sequence[str] = (),
        **counts: int,
    ) -> bool:
        """Queue the events now; False (logged) when the queue is unreachable.

        `counts` feed the live counters; those the history keeps are also counted there once
        per type in `event_types` (the types of the events counted).
        """
        self._count_history(event_types, counts)
        message = self._message
        messages = [message(str(i)) for i in event_ids]
        try:
            self.broker.send(messages, counts)
            return True
        except QUEUE_ERRORS as exc:
            # The events are committed; recovery re-sends them when the queue is back.
            logger.warning(
                "queue unavailable, %d event(s) left for recovery: %s", len(messages), exc
            )
            return False

    def take(self, limit: int) -> list[str]:
        """Up to `limit` more due event ids off the queue, in one round trip ([] if none).

        Like the consumer's own dequeue, this removes the messages: a worker that dies holding
        them leaves the events to recovery. Messages not due yet go to the schedule, as Huey's
        worker would put them.
        """
        if limit < 1:
            return []
        try:
            messages = self.broker.take(limit)
        except QUEUE_ERRORS as exc:
            logger.warning("could not take more messages: %s", exc)
            return []
        ids: list[str] = []
        for message in messages:
            try:
                task = self.huey.deserialize_task(message)
            except Exception:
                logger.exception("dropping a queue message that cannot be read")
                continue
            if task.name == self.process_task.name and self.huey.ready_to_run(task):
                ids.extend(task.args)
            elif task.name == self.process_task.name:
                self.huey.add_schedule(task)
            else:
                self.huey.enqueue(task)
        return ids

    def enqueue_later(self, event_id: uuid.UUID, delay: float) -> bool:
        """A wake-up call for a retry; the database's next_attempt_at is what counts."""
        try:
            self.process_task.schedule((str(event_id),), delay=delay)
            return True
        except QUEUE_ERRORS as exc:
            logger.warning("queue unavailable, retry of %s left for recovery: %s", event_id, exc)
            return False

    def record(self, *, event_types: Sequence[str] = (), **counts: int) -> None:
        """Feed the live counters (and the history, as enqueue does)."""
        self._count_history(event_types, counts)
        self.record_latencies((), **counts)

    def record_processed(self, latencies: Sequence[tuple[str, float]]) -> None:
        """Count processed events, given as (type, latency in ms): live counters and history."""
        self.history.processed(latencies)
        self.record_latencies([ms for _, ms in latencies], processed=len(latencies))

    def _count_history(self, event_types: Sequence[str], counts: dict[str, int]) -> None:
        if event_types:
            for metric in counts:
                if metric in HISTORY_COUNTS:
                    self.history.count(metric, event_types)

    def record_latencies(self, latencies_ms: Iterable[float], **counts: int) -> None:
        try:
            self.stats.record(counts, latencies_ms)
        except QUEUE_ERRORS as exc:
            logger.warning("could not record stats %s: %s", counts, exc)

    def messages_waiting(self) -> int:
        """Messages held by the queue and its schedule (raises when the queue is unreachable)."""
        waiting: int = self.huey.pending_count() + self.huey.scheduled_count()
        return waiting

    def ping(self) -> None:
        """Raise if the queue cannot be reached."""
        self.broker.ping()


def init_queue(app: Flask, settings: Settings, backend: Backend) -> EventQueue:
    """Build the app's queue on the backend's broker, and the processor behind its task."""
    huey = backend.broker.huey
    processor: Processor

    @huey.task(name="process_event")  # type: ignore[untyped-decorator]  # huey is untyped
    def process_event_task(event_id: str) -> None:
        with app.app_context():
            processor.process(event_id)

    history = init_history(app, backend.database, settings.metrics_flush_seconds)
    queue = EventQueue(backend, process_event_task, history)
    handlers = load_handlers(settings.handlers)
    processor = Processor(queue, handlers, settings, backend.database)
    app.extensions[QUEUE_KEY] = queue
    app.extensions[PROCESSOR_KEY] = processor
    return queue


def get_queue() -> EventQueue:
    queue: EventQueue = current_app.extensions[QUEUE_KEY]
    return queue


def processor_of(app: Flask) -> Processor:
    """The app's processor: its handlers, its in-flight events, its batch sizer."""
    processor: Processor = app.extensions[PROCESSOR_KEY]
    return processor
