"""Handlers the tests load through EVENTFLOW_HANDLERS=tests.handlers.

Every call appends a line "<event id> <attempt>" to the file named in the payload's
"effects" field, so tests count handler effects exactly, across processes and crashes.
"""

import json
import os
import time

from eventflow.tasks import PermanentError, handler


def _effect(event) -> None:
    path = event.payload.get("effects")
    if path:
        with open(path, "a") as f:
            f.write(f"{event.id} {event.attempt}\n")
            f.flush()
            os.fsync(f.fileno())


@handler("TEST_OK")
def ok(event):
    _effect(event)
    return {"attempt": event.attempt}


@handler("TEST_FLAKY")
def flaky(event):
    """Fails until attempt payload["succeed_on"]."""
    _effect(event)
    if event.attempt < event.payload.get("succeed_on", 3):
        raise RuntimeError(f"flaky failure on attempt {event.attempt}")
    return {"succeeded_on": event.attempt}


@handler("TEST_ALWAYS_FAILS")
def always_fails(event):
    _effect(event)
    raise ValueError("this handler always fails")


@handler("TEST_PERMANENT")
def permanent(event):
    _effect(event)
    raise PermanentError("cannot ever succeed")


@handler("TEST_SLOW")
def slow(event):
    """Sleeps payload["seconds"] before its effect is recorded as done."""
    time.sleep(event.payload.get("seconds", 1))
    _effect(event)
    return {"slept": event.payload.get("seconds", 1)}


@handler("TEST_TOGGLE")
def toggle(event):
    """Fails while the file payload["fail_while"] exists (replay tests remove it)."""
    _effect(event)
    if os.path.exists(event.payload["fail_while"]):
        raise RuntimeError("toggle is on")
    return {"ok": True}


# Three distinct errors whose messages vary from event to event (numbers, ids, quoted values):
# each handler's failures make one error group (tests/test_error_groups.py).
def _customer(payload):
    return payload["customers"][payload["n"] % len(payload["customers"])]


@handler("TEST_NO_CUSTOMER")
def no_customer(event):
    raise LookupError(f"order {event.payload['n']} has no customer {_customer(event.payload)!r}")


@handler("TEST_TIMEOUT")
def upstream_timeout(event):
    n = event.payload["n"]
    raise TimeoutError(f"upstream 10.0.0.{n % 250} timed out after {1000 + n} ms")


@handler("TEST_BAD_PRICE")
def bad_price(event):
    return _check_price(event.payload)


def _check_price(payload):
    raise ValueError(f"price of sku {payload['sku']} must be positive, got {-payload['n']}")


@handler("TEST_NEEDS_FIX")
def needs_fix(event):
    """Fails for good until its payload says "fixed": true; appends each payload it saw, as
    a JSON line, to the file named in payload["seen"] (edit-and-replay tests)."""
    with open(event.payload["seen"], "a") as f:
        f.write(json.dumps(event.payload, sort_keys=True) + "\n")
    if not event.payload.get("fixed"):
        raise PermanentError("the payload needs fixing")
    return {"fixed": True}


@handler("TEST_TWO_ATTEMPTS", max_attempts=2, retry_base_seconds=0.01, retry_max_seconds=0.05)
def two_attempts(event):
    """Always fails; its own policy gives it 2 attempts (the tests' global is the default 5)."""
    _effect(event)
    raise RuntimeError(f"attempt {event.attempt} of 2 failed")


@handler("history.fails")
def history_fails(event):
    """Always fails (tests/test_metrics_history.py: a type of its own, counted exactly)."""
    raise ValueError("history test failure")
