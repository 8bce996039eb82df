"""Run one event: claim it, call its handler, then record success, a retry or the DLQ."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
from typing import TYPE_CHECKING

from ..config import Settings
from . import transitions
from .registry import HandlerRegistry, PermanentError
from .transitions import ClaimedEvent

if TYPE_CHECKING:
    from ..backend import Database
    from .queue import EventQueue

logger = logging.getLogger(__name__)
MAX_ERROR_LENGTH = 2000
# A batch runs for at most about this long before giving the rest back: it bounds how long a
# claimed event waits for its turn (and how long SIGTERM waits for a batch).
BATCH_SECONDS = 0.05
# Only handlers faster than 0.1 ms reach the cap. Each batch costs two statements and a few
# round trips whatever its size; at 100 that fixed cost was a third of a no-op event's CPU.
MAX_BATCH = 500
# Successes are committed once this long has passed since the last commit: a worker killed
# mid-batch repeats at most the handlers that finished in that window.
FLUSH_SECONDS = 0.005


def worker_id() -> str:
    """This process's name in locks, attempts and heartbeats."""
    return f"{socket.gethostname()}:{os.getpid()}"


class InFlight:
    """Events this process is running now, so its heartbeat can keep their locks fresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[uuid.UUID, int] = {}
        self.processed = 0

    def add(self, event_ids: list[uuid.UUID]) -> None:
        with self._lock:
            for event_id in event_ids:
                self._events[event_id] = self._events.get(event_id, 0) + 1

    def remove(self, event_ids: list[uuid.UUID]) -> None:
        with self._lock:
            self.processed += len(event_ids)
            for event_id in event_ids:
                if self._events.get(event_id, 0) <= 1:
                    self._events.pop(event_id, None)
                else:
                    self._events[event_id] -= 1

    def ids(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._events)


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Exponential backoff with full jitter: random(0, min(max, base * 2**(attempt-1)))."""
    return random.uniform(0, min(maximum, base * 2 ** (attempt - 1)))


def _json_result(value: object) -> str:
    """The handler's result as the strict JSON text the database will store."""
    text = json.dumps(value, allow_nan=False)
    if "\\u0000" in text:
        raise ValueError("handler result contains a NUL character")
    return text


def _describe(exc: BaseException) -> str:
    message = f"{type(exc).__name__}: {exc}"
    return message[:MAX_ERROR_LENGTH]


def _traceback(exc: Exception) -> str:
    return "".join(traceback.format_exception(exc))


class BatchSizer:
    """How many messages one task takes: as many as it recently got through in BATCH_SECONDS.

    Fast handlers share one claim and one completion commit per batch (the commits, not the
    handlers, were the cost); slow ones go one at a time, as a batch starts at one event.
    """

    def __init__(self) -> None:
        self.seconds_per_event = BATCH_SECONDS

    def size(self) -> int:
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.seconds_per_event, 1e-6))))

    def observe(self, seconds: float, events: int) -> None:
        self.seconds_per_event = (self.seconds_per_event + seconds / events) / 2


class Processor:
    """Runs the queue's messages: claim the events, call their handlers, record the outcomes.

    One per app, so per worker process: its handlers, the events it is running (for the
    heartbeat) and how large its batches are, shared with no other app.
    """

    def __init__(
        self,
        queue: EventQueue,
        handlers: HandlerRegistry,
        settings: Settings,
        database: Database,
    ) -> None:
        self.queue = queue
        self.handlers = handlers
        self.settings = settings
        self.database = database
        self.in_flight = InFlight()
        self.sizer = BatchSizer()

    def process(self, event_id: str) -> None:
        """The task behind every queue message; a message for an event it cannot claim does nothing.

        It takes more waiting messages along (see BatchSizer) and runs them as one batch.
        """
        ids: dict[uuid.UUID, None] = {}  # in message order, duplicates once
        for raw in [event_id, *self.queue.take(self.sizer.size() - 1)]:
            try:
                ids[uuid.UUID(raw)] = None
            except (ValueError, TypeError, AttributeError):
                logger.error("dropping queue message with a malformed event id %r", raw)
        claims = self.database.claim_events(list(ids), worker_id()) if ids else []
        if not claims:
            logger.debug("event(s) %s not claimable (done, claimed or not due): skipped", list(ids))
            return
        claimed_ids = [claimed.id for claimed in claims]
        self.in_flight.add(claimed_ids)
        try:
            self._run_batch(claims)
        finally:
            self.in_flight.remove(claimed_ids)

    def _run_batch(self, claims: list[ClaimedEvent]) -> None:
        started = flushed = time.monotonic()
        done: list[tuple[ClaimedEvent, str]] = []
        ran = 0
        for index, claimed in enumerate(claims):
            if index and time.monotonic() - started > BATCH_SECONDS:
                # Slower than expected: give the rest back rather than keep them waiting claimed.
                released = transitions.release_claims(claims[index:])
                if released:
                    self.queue.enqueue(released)
                break
            ran += 1
            result = self._run(claimed)
            if result is not None:
                done.append((claimed, result))
            # Record successes often enough that a crash can repeat only the last few ms.
            if time.monotonic() - flushed > FLUSH_SECONDS:
                self._complete(done)
                done, flushed = [], time.monotonic()
        self._complete(done)
        self.sizer.observe(time.monotonic() - started, ran)

    def _run(self, claimed: ClaimedEvent) -> str | None:
        """Call the handler; return its result as JSON text, or None after a retry or the DLQ."""
        func = self.handlers.get(claimed.type)
        try:
            return _json_result(func(claimed)) if func is not None else "null"
        except PermanentError as exc:
            self._to_dlq(claimed, exc)
        except Exception as exc:
            if claimed.attempt >= self.settings.max_attempts:
                self._to_dlq(claimed, exc)
            else:
                self._retry(claimed, exc)
        return None

    def _complete(self, done: list[tuple[ClaimedEvent, str]]) -> None:
        if not done:
            return
        latencies = self.database.complete_events(done)
        for claimed, _ in done:
            if claimed.id not in latencies:
                logger.warning("event %s: claim lost before completion; result dropped", claimed.id)
        if latencies:
            self.queue.record_latencies(latencies.values(), processed=len(latencies))

    def _retry(self, claimed: ClaimedEvent, exc: Exception) -> None:
        settings = self.settings
        delay = backoff_delay(
            claimed.attempt, settings.retry_base_seconds, settings.retry_max_seconds
        )
        if transitions.schedule_retry(claimed, _describe(exc), _traceback(exc), delay):
            logger.info(
                "event %s attempt %d failed, retry in %.2fs", claimed.id, claimed.attempt, delay
            )
            self.queue.enqueue_later(claimed.id, delay)
            self.queue.record(retried=1)

    def _to_dlq(self, claimed: ClaimedEvent, exc: Exception) -> None:
        if transitions.fail_event(claimed, _describe(exc), _traceback(exc)):
            logger.warning("event %s failed for good: %s", claimed.id, _describe(exc))
            self.queue.record(failed=1)
