"""Event processing: the handler registry, the queue, the worker pipeline and recovery."""

from .registry import PermanentError, handler

__all__ = ["PermanentError", "handler"]
