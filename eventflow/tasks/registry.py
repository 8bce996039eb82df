"""Handlers are plain functions marked with @handler("TYPE"); each app registers those it loads.

`@handler("TYPE", max_attempts=…, retry_base_seconds=…, retry_max_seconds=…)` also gives the
type a retry policy of its own; what it leaves out comes from the global settings.

The decorator only marks the function. `load_handlers` imports the built-in handlers and the
modules named in EVENTFLOW_HANDLERS and registers their marked functions in a registry of the
app's own, so two apps in one process (tests, a CLI next to a server) keep their handlers apart.
A handler is found when it is an attribute of its module, as a module-level function is.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TypeVar

from ..config import Settings
from .transitions import ClaimedEvent

logger = logging.getLogger(__name__)

BUILTIN_HANDLERS = "eventflow.tasks.builtin"
_MARK = "__eventflow_handles__"  # the event types a function was marked for, in order
_POLICIES = "__eventflow_policies__"  # event type -> the policy it was marked with

# A handler gets the claimed event (id, type, payload, attempt) and returns its JSON result.
Handler = Callable[[ClaimedEvent], object]
H = TypeVar("H", bound=Handler)


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the event goes straight to the DLQ."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a type's events are tried and how long they wait between tries."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        """The global policy (EVENTFLOW_MAX_ATTEMPTS, _RETRY_BASE_SECONDS, _RETRY_MAX_SECONDS)."""
        return cls(settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)


@dataclass(frozen=True)
class PolicyOverride:
    """What a @handler(...) sets of the policy; None keeps the global value."""

    max_attempts: int | None = None
    retry_base_seconds: float | None = None
    retry_max_seconds: float | None = None

    def __post_init__(self) -> None:
        # Checked when the module is imported, so a bad policy stops start-up, not a retry.
        attempts, base, cap = self.max_attempts, self.retry_base_seconds, self.retry_max_seconds
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)):
            raise ValueError(f"max_attempts must be a whole number, not {attempts!r}")
        if attempts is not None and attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, not {attempts}")
        for name, value in (("retry_base_seconds", base), ("retry_max_seconds", cap)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, not {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if base is not None and cap is not None and base > cap:
            raise ValueError(
                f"retry_base_seconds ({base}) must not exceed retry_max_seconds ({cap})"
            )

    def over(self, policy: RetryPolicy) -> RetryPolicy:
        """This override applied to a policy (the global one)."""
        values = {key: value for key, value in vars(self).items() if value is not None}
        return replace(policy, **values)


def handler(
    event_type: str,
    *,
    max_attempts: int | None = None,
    retry_base_seconds: float | None = None,
    retry_max_seconds: float | None = None,
) -> Callable[[H], H]:
    """Mark the decorated function as the handler for `event_type` (the last one loaded wins),
    with the type's own retry policy if given (ValueError at once if it is not valid)."""
    policy = PolicyOverride(max_attempts, retry_base_seconds, retry_max_seconds)

    def mark(func: H) -> H:
        setattr(func, _MARK, (*getattr(func, _MARK, ()), event_type))
        setattr(func, _POLICIES, {**getattr(func, _POLICIES, {}), event_type: policy})
        return func

    return mark


class HandlerRegistry:
    """One app's handlers by event type."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._policies: dict[str, PolicyOverride] = {}

    def register(
        self, event_type: str, func: Handler, policy: PolicyOverride | None = None
    ) -> None:
        if self._handlers.get(event_type, func) is not func:
            name = getattr(func, "__qualname__", repr(func))
            logger.warning("handler for %s replaced by %s", event_type, name)
        self._handlers[event_type] = func
        self._policies[event_type] = policy or PolicyOverride()

    def register_module(self, module: ModuleType) -> None:
        """Register every function of the module marked with @handler."""
        for value in vars(module).values():
            types = getattr(value, _MARK, ()) if callable(value) else ()
            policies = getattr(value, _POLICIES, {}) if types else {}
            for event_type in types if isinstance(types, tuple) else ():
                self.register(event_type, value, policies.get(event_type))

    def get(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    def policy(self, event_type: str, settings: Settings) -> RetryPolicy:
        """The type's retry policy: its handler's, over the global settings."""
        override = self._policies.get(event_type)
        default = RetryPolicy.of(settings)
        return override.over(default) if override is not None else default


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
