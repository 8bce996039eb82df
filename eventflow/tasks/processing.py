"""Run one event: claim it, call its handler, then record success, a retry or the DLQ."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import traceback
import uuid
from typing import Any

from .. import transitions
from ..config import Settings
from .registry import PermanentError, get_handler

logger = logging.getLogger(__name__)
MAX_ERROR_LENGTH = 2000


def worker_id() -> str:
    """This process's name in locks, attempts and heartbeats."""
    return f"{socket.gethostname()}:{os.getpid()}"


class InFlight:
    """Events this process is running now, so its heartbeat can keep their locks fresh."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: dict[uuid.UUID, int] = {}
        self.processed = 0

    def add(self, event_id: uuid.UUID) -> None:
        with self._lock:
            self._events[event_id] = self._events.get(event_id, 0) + 1

    def remove(self, event_id: uuid.UUID) -> None:
        with self._lock:
            self.processed += 1
            if self._events.get(event_id, 0) <= 1:
                self._events.pop(event_id, None)
            else:
                self._events[event_id] -= 1

    def ids(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._events)


in_flight = InFlight()


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Exponential backoff with full jitter: random(0, min(max, base * 2**(attempt-1)))."""
    return random.uniform(0, min(maximum, base * 2 ** (attempt - 1)))


def _json_result(value: Any) -> Any:
    """Round-trip the handler's result through strict JSON, as the database will store it."""
    text = json.dumps(value, allow_nan=False)
    if "\\u0000" in text:
        raise ValueError("handler result contains a NUL character")
    return json.loads(text)


def _describe(exc: BaseException) -> str:
    message = f"{type(exc).__name__}: {exc}"
    return message[:MAX_ERROR_LENGTH]


def process_event(event_id: str, queue, settings: Settings) -> None:
    """The task behind every queue message; a message for an event it cannot claim does nothing."""
    try:
        key = uuid.UUID(event_id)
    except ValueError:
        logger.error("dropping queue message with a malformed event id %r", event_id)
        return
    claimed = transitions.claim_event(key, worker_id())
    if claimed is None:
        logger.debug("event %s is not claimable (done, claimed or not due): skipped", event_id)
        return
    in_flight.add(claimed.id)
    try:
        _run(claimed, queue, settings)
    finally:
        in_flight.remove(claimed.id)


def _run(claimed: transitions.ClaimedEvent, queue, settings: Settings) -> None:
    func = get_handler(claimed.type)
    try:
        result = _json_result(func(claimed)) if func is not None else None
    except PermanentError as exc:
        _to_dlq(claimed, queue, exc)
        return
    except Exception as exc:
        if claimed.attempt >= settings.max_attempts:
            _to_dlq(claimed, queue, exc)
        else:
            _retry(claimed, queue, settings, exc)
        return
    latency = transitions.complete_event(claimed, result)
    if latency is None:
        logger.warning("event %s: claim lost before completion; result dropped", claimed.id)
        return
    queue.record_latencies([latency], processed=1)


def _retry(claimed, queue, settings: Settings, exc: Exception) -> None:
    delay = backoff_delay(claimed.attempt, settings.retry_base_seconds, settings.retry_max_seconds)
    if transitions.schedule_retry(claimed, _describe(exc), traceback.format_exc(), delay):
        logger.info(
            "event %s attempt %d failed, retry in %.2fs", claimed.id, claimed.attempt, delay
        )
        queue.enqueue_later(claimed.id, delay)
        queue.record(retried=1)


def _to_dlq(claimed, queue, exc: Exception) -> None:
    if transitions.fail_event(claimed, _describe(exc), traceback.format_exc()):
        logger.warning("event %s failed for good: %s", claimed.id, _describe(exc))
        queue.record(failed=1)
