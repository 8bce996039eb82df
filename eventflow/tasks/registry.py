"""Handlers are plain functions registered per event type with @handler("TYPE")."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Any]
_handlers: dict[str, Handler] = {}


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the event goes straight to the DLQ."""


def handler(event_type: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler for `event_type` (the last one wins)."""

    def register(func: Handler) -> Handler:
        if event_type in _handlers and _handlers[event_type] is not func:
            logger.warning("handler for %s replaced by %s", event_type, func.__qualname__)
        _handlers[event_type] = func
        return func

    return register


def get_handler(event_type: str) -> Handler | None:
    return _handlers.get(event_type)


def load_handler_modules(paths: Iterable[str]) -> None:
    """Import the built-in handlers and every module named in EVENTFLOW_HANDLERS."""
    importlib.import_module("eventflow.tasks.builtin")
    for path in paths:
        try:
            importlib.import_module(path)
        except ImportError as exc:
            raise RuntimeError(f"EVENTFLOW_HANDLERS: cannot import {path!r}: {exc}") from exc
