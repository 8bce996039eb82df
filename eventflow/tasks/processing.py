"""Run one event: claim it, call its handler, then record success, a retry or the DLQ.

Each attempt ends in one log line (`log_attempt`): `{ts, level, logger, request_id, event_id,
type, attempt, outcome, duration_ms}`, where the outcome is processed, retry (with `error` and
`retry_in_ms`), failed (the DLQ, with `error`), claim_lost (recovery took the event back while
its handler ran: the result is dropped) or orphaned (written by recovery, see recovery.py).
`duration_ms` is the handler's time; `request_id` is the X-Request-ID of the request that
created the event, also set while its handler runs, so the handler's own log lines carry it.
"""

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
from ..logs import REQUEST_ID, emit, emit_lines
from . import transitions
from .fingerprints import fingerprint_exception
from .registry import HandlerRegistry, PermanentError, RetryPolicy
from .transitions import ClaimedEvent

if TYPE_CHECKING:
    from ..backend import Database
    from .queue import EventQueue

logger = logging.getLogger(__name__)
attempt_logger = logging.getLogger("eventflow.attempt")
ATTEMPT_TEXT = (
    "event %(event_id)s %(type)s attempt %(attempt)s %(outcome)s duration_ms=%(duration_ms)s "
    "request_id=%(request_id)s"
)
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


def attempt_line(
    outcome: str,
    request_id: str | None,
    event_id: uuid.UUID,
    event_type: str,
    attempt: int,
    seconds: float | None,
    **extra: object,
) -> dict[str, object]:
    """The fields of an attempt's line: how it ended, and for which request's event."""
    return {
        "request_id": request_id,
        "event_id": str(event_id),
        "type": event_type,
        "attempt": attempt,
        "outcome": outcome,
        "duration_ms": None if seconds is None else round(seconds * 1000, 2),
        **extra,
    }


def log_attempt(
    level: int,
    outcome: str,
    request_id: str | None,
    event_id: uuid.UUID,
    event_type: str,
    attempt: int,
    seconds: float | None,
    **extra: object,
) -> None:
    """Write one attempt's line."""
    fields = attempt_line(outcome, request_id, event_id, event_type, attempt, seconds, **extra)
    emit(attempt_logger, level, _attempt_text(extra), fields)


def _attempt_text(extra: dict[str, object]) -> str:
    return ATTEMPT_TEXT + "".join(f" {key}=%({key})s" for key in extra)


def _claim_line(
    outcome: str, claimed: ClaimedEvent, seconds: float, **extra: object
) -> dict[str, object]:
    return attempt_line(
        outcome, claimed.request_id, claimed.id, claimed.type, claimed.attempt, seconds, **extra
    )


def _log_claim(
    level: int, outcome: str, claimed: ClaimedEvent, seconds: float, **extra: object
) -> None:
    fields = _claim_line(outcome, claimed, seconds, **extra)
    emit(attempt_logger, level, _attempt_text(extra), fields)


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


def _failure(exc: Exception) -> transitions.Failure:
    """The attempt's error line, its traceback and its error group's fingerprint."""
    return transitions.Failure(
        _describe(exc), "".join(traceback.format_exception(exc)), fingerprint_exception(exc)
    )


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
        done: list[tuple[ClaimedEvent, str, float]] = []  # (claim, result, seconds)
        ran = 0
        for index, claimed in enumerate(claims):
            if index and time.monotonic() - started > BATCH_SECONDS:
                # Slower than expected: give the rest back rather than keep them waiting claimed.
                released = transitions.release_claims(claims[index:])
                if released:
                    self.queue.enqueue(released)
                break
            ran += 1
            began = time.perf_counter()
            result = self._run(claimed)
            if result is not None:
                done.append((claimed, result, time.perf_counter() - began))
            # Record successes often enough that a crash can repeat only the last few ms.
            if time.monotonic() - flushed > FLUSH_SECONDS:
                self._complete(done)
                done, flushed = [], time.monotonic()
        self._complete(done)
        self.sizer.observe(time.monotonic() - started, ran)

    def _run(self, claimed: ClaimedEvent) -> str | None:
        """Call the handler; return its result as JSON text, or None after a retry or the DLQ."""
        func = self.handlers.get(claimed.type)
        began = time.perf_counter()
        context = REQUEST_ID.set(claimed.request_id)
        try:
            return _json_result(func(claimed)) if func is not None else "null"
        except PermanentError as exc:
            self._to_dlq(claimed, exc, time.perf_counter() - began)
        except Exception as exc:
            seconds = time.perf_counter() - began
            policy = self.handlers.policy(claimed.type, self.settings)
            if claimed.attempt >= policy.max_attempts:
                self._to_dlq(claimed, exc, seconds)
            else:
                self._retry(claimed, exc, seconds, policy)
        finally:
            REQUEST_ID.reset(context)
        return None

    def _complete(self, done: list[tuple[ClaimedEvent, str, float]]) -> None:
        if not done:
            return
        latencies = self.database.complete_events(
            [(claimed, result) for claimed, result, _ in done]
        )
        processed = []
        for claimed, _, seconds in done:
            if claimed.id in latencies:
                processed.append(_claim_line("processed", claimed, seconds))
            else:
                _log_claim(logging.WARNING, "claim_lost", claimed, seconds)
        # One record for the lot, a line each: a record and a write per event added about half
        # to a no-op event's worker CPU (bench/process.py), one per batch about a tenth.
        emit_lines(attempt_logger, logging.INFO, ATTEMPT_TEXT, processed)
        if latencies:
            self.queue.record_processed(
                [
                    (claimed.type, latencies[claimed.id])
                    for claimed, _, _ in done
                    if claimed.id in latencies
                ]
            )

    def _retry(
        self, claimed: ClaimedEvent, exc: Exception, seconds: float, policy: RetryPolicy
    ) -> None:
        delay = backoff_delay(claimed.attempt, policy.retry_base_seconds, policy.retry_max_seconds)
        failure = _failure(exc)
        error = failure.error
        if self.database.finish_attempt(transitions.retry_later(claimed, failure, delay)):
            _log_claim(
                logging.WARNING,
                "retry",
                claimed,
                seconds,
                error=error,
                retry_in_ms=round(delay * 1000),
            )
            self.queue.enqueue_later(claimed.id, delay)
            self.queue.record(retried=1, event_types=[claimed.type])
        else:
            _log_claim(logging.WARNING, "claim_lost", claimed, seconds, error=error)

    def _to_dlq(self, claimed: ClaimedEvent, exc: Exception, seconds: float) -> None:
        failure = _failure(exc)
        error = failure.error
        if self.database.finish_attempt(transitions.to_dlq(claimed, failure)):
            _log_claim(logging.ERROR, "failed", claimed, seconds, error=error)
            self.queue.record(failed=1, event_types=[claimed.type])
        else:
            _log_claim(logging.WARNING, "claim_lost", claimed, seconds, error=error)
