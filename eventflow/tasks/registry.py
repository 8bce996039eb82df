"""Handlers are plain functions marked with @handler("TYPE"); each app registers those it loads.

The decorator only marks the function. `load_handlers` imports the built-in handlers and the
modules named in EVENTFLOW_HANDLERS and registers their marked functions in a registry of the
app's own, so two apps in one process (tests, a CLI next to a server) keep their handlers apart.
A handler is found when it is an attribute of its module, as a module-level function is.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TypeVar

from .transitions import ClaimedEvent

logger = logging.getLogger(__name__)

BUILTIN_HANDLERS = "eventflow.tasks.builtin"
_MARK = "__eventflow_handles__"  # the event types a function was marked for, in order

# A handler gets the claimed event (id, type, payload, attempt) and returns its JSON result.
Handler = Callable[[ClaimedEvent], object]
H = TypeVar("H", bound=Handler)


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the event goes straight to the DLQ."""


def handler(event_type: str) -> Callable[[H], H]:
    """Mark the decorated function as the handler for `event_type` (the last one loaded wins)."""

    def mark(func: H) -> H:
        setattr(func, _MARK, (*getattr(func, _MARK, ()), event_type))
        return func

    return mark


class HandlerRegistry:
    """One app's handlers by event type."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, event_type: str, func: Handler) -> None:
        if self._handlers.get(event_type, func) is not func:
            name = getattr(func, "__qualname__", repr(func))
            logger.warning("handler for %s replaced by %s", event_type, name)
        self._handlers[event_type] = func

    def register_module(self, module: ModuleType) -> None:
        """Register every function of the module marked with @handler."""
        for value in vars(module).values():
            types = getattr(value, _MARK, ()) if callable(value) else ()
            for event_type in types if isinstance(types, tuple) else ():
                self.register(event_type, value)

    def get(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    def event_types(self) -> list[str]:
        return sorted(self._handlers)


def load_handlers(paths: Iterable[str]) -> HandlerRegistry:
    """The built-in handlers and those of every module named in EVENTFLOW_HANDLERS."""
    registry = HandlerRegistry()
    registry.register_module(importlib.import_module(BUILTIN_HANDLERS))
    for path in paths:
        try:
            module = importlib.import_module(path)
        except ImportError as exc:
            raise RuntimeError(f"EVENTFLOW_HANDLERS: cannot import {path!r}: {exc}") from exc
        registry.register_module(module)
    return registry
