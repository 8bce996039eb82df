"""Moved to eventflow.tasks.transitions: kept for eventflow/events.py until it imports it there."""

from .tasks.transitions import replay_events, replay_failed_in_batches

__all__ = ["replay_events", "replay_failed_in_batches"]
