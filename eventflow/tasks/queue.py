"""The Huey queue. Messages carry only an event id; the database holds everything else."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterable

import redis
from flask import Flask, current_app
from huey import RedisHuey, SqliteHuey

from ..config import Settings
from .counters import DatabaseCounters, RedisCounters
from .processing import process_event

logger = logging.getLogger(__name__)

QUEUE_NAME = "eventflow"
# Redis must answer quickly or not at all: ingest answers 202 either way.
_REDIS_OPTIONS = dict(socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
QUEUE_ERRORS = (redis.RedisError, sqlite3.Error, OSError)


class EventQueue:
    """Sends event ids to the workers and feeds the live counters in the same round trip."""

    def __init__(self, huey, stats, process_task):
        self.huey = huey
        self.stats = stats
        self.process_task = process_task
        self.redis = getattr(huey.storage, "conn", None) if isinstance(huey, RedisHuey) else None

    def enqueue(self, event_ids: Iterable[uuid.UUID], **counts: int) -> bool:
        """Queue the events now; False (logged) when the queue is unreachable."""
        messages = [self.huey.serialize_task(self.process_task.s(str(i))) for i in event_ids]
        try:
            if self.redis is not None:
                pipe = self.redis.pipeline(transaction=False)
                if messages:
                    pipe.lpush(self.huey.storage.queue_key, *messages)
                self.stats.add_to(pipe, counts)
                pipe.execute()
            else:
                for message in messages:
                    self.huey.storage.enqueue(message)
                self.stats.record(counts)
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
        if self.redis is None or limit < 1:
            return []
        try:
            messages = self.redis.rpop(self.huey.storage.queue_key, limit) or []
        except QUEUE_ERRORS as exc:
            logger.warning("could not take more messages: %s", exc)
            return []
        ids = []
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

    def record(self, **counts: int) -> None:
        self.record_latencies((), **counts)

    def record_latencies(self, latencies_ms: Iterable[float], **counts: int) -> None:
        try:
            self.stats.record(counts, latencies_ms)
        except QUEUE_ERRORS as exc:
            logger.warning("could not record stats %s: %s", counts, exc)

    def messages_waiting(self) -> int:
        """Messages held by the queue and its schedule (raises when the queue is unreachable)."""
        return self.huey.pending_count() + self.huey.scheduled_count()

    def ping(self) -> None:
        """Raise if the queue cannot be reached."""
        if self.redis is not None:
            self.redis.ping()
        else:
            self.huey.pending_count()


def build_huey(settings: Settings):
    if settings.redis_url:
        pool = redis.ConnectionPool.from_url(settings.redis_url, **_REDIS_OPTIONS)
        return RedisHuey(QUEUE_NAME, results=False, connection_pool=pool)
    return SqliteHuey(QUEUE_NAME, results=False, filename=settings.queue_path)


def init_queue(app: Flask, settings: Settings) -> EventQueue:
    """Build the app's queue and register the process-an-event task on it."""
    huey = build_huey(settings)
    stats = RedisCounters(huey.storage.conn) if settings.redis_url else DatabaseCounters()

    queue: EventQueue

    @huey.task(name="process_event")
    def process_event_task(event_id: str) -> None:
        with app.app_context():
            process_event(event_id, queue, settings)

    queue = EventQueue(huey, stats, process_event_task)
    app.extensions["eventflow.queue"] = queue
    return queue


def get_queue() -> EventQueue:
    return current_app.extensions["eventflow.queue"]
