"""The error-group rule on real exceptions: what falls together and what stays apart."""

from __future__ import annotations

import json
import traceback
import uuid
from types import SimpleNamespace

import pytest

from eventflow.tasks import PermanentError, builtin, fingerprints
from eventflow.tasks.fingerprints import fingerprint_exception, fingerprint_text
from tests import handlers


def raised(func, *args) -> BaseException:
    try:
        func(*args)
    except Exception as exc:
        return exc
    raise AssertionError(f"{func.__name__} did not raise")


def event(**payload):
    return SimpleNamespace(id=uuid.uuid4(), attempt=1, payload=payload)


def test_messages_differing_only_in_numbers_ids_and_quoted_values_fall_together():
    first = raised(handlers.no_customer, event(n=7, customers=["ACME Corp"]))
    second = raised(handlers.no_customer, event(n=1234, customers=[str(uuid.uuid4())]))
    assert str(first) != str(second)
    assert fingerprint_exception(first) == fingerprint_exception(second)
    assert fingerprint_exception(first).message == "order <n> has no customer <str>"

    timeouts = [raised(handlers.upstream_timeout, event(n=n)) for n in (3, 99)]
    assert fingerprint_exception(timeouts[0]) == fingerprint_exception(timeouts[1])
    assert fingerprint_exception(timeouts[0]).message == (
        "upstream <n>.<n>.<n>.<n> timed out after <n> ms"
    )


def test_uuids_hex_strings_and_addresses_are_normalised():
    message = (
        f"job {uuid.uuid4()} / {uuid.uuid4().hex} at 0x7f3a2c1d9e80 digest 9f86d081884c7d65 "
        "in v2 of order2"
    )
    assert fingerprints.normalise_message(message) == (
        "job <uuid> / <uuid> at <hex> digest <hex> in v2 of order2"
    )


def test_a_long_hex_value_without_letters_falls_together_with_one_that_has_them():
    # A 12-hex-digit sku is all digits about once in 300: it must not make a group of its own.
    with_letters = fingerprints.normalise_message("price of sku 3fa9c01be742 must be positive")
    only_digits = fingerprints.normalise_message("price of sku 309101254742 must be positive")
    assert with_letters == only_digits == "price of sku <hex> must be positive"
    assert fingerprints.normalise_message("retry 1234567 of 7") == "retry <n> of <n>"


def test_different_classes_and_different_frames_make_different_groups():
    no_customer = fingerprint_exception(raised(handlers.no_customer, event(n=1, customers=["a"])))
    timeout = fingerprint_exception(raised(handlers.upstream_timeout, event(n=1)))
    price = fingerprint_exception(raised(handlers.bad_price, event(n=1, sku="X-1")))
    assert len({no_customer.digest, timeout.digest, price.digest}) == 3
    assert (no_customer.exception, timeout.exception, price.exception) == (
        "LookupError",
        "TimeoutError",
        "ValueError",
    )

    def elsewhere(payload):
        raise ValueError(f"price of sku {payload['sku']} must be positive, got {-payload['n']}")

    same_text = fingerprint_exception(raised(elsewhere, {"sku": "X-1", "n": 1}))
    assert same_text.message == price.message
    assert same_text.frame != price.frame
    assert same_text.digest != price.digest


def test_the_frame_is_the_innermost_in_handler_code_not_a_library_or_the_pipeline():
    # _check_price is called by the handler: the innermost frame of handler code.
    assert fingerprint_exception(raised(handlers.bad_price, event(n=1, sku="A"))).frame == (
        "tests.handlers:_check_price"
    )

    def parse(text):
        return json.loads(text)  # raises inside the standard library's json.decoder

    exc = raised(parse, "{not json")
    assert fingerprint_exception(exc).exception == "json.decoder.JSONDecodeError"
    assert fingerprint_exception(exc).frame.endswith(":parse")

    # The built-in handlers are handler code, though they live in the eventflow package.
    order = raised(builtin.order_created, event(items=[{"price": "x"}]))
    assert isinstance(order, PermanentError)
    assert fingerprint_exception(order) == fingerprints.Fingerprint(
        "eventflow.tasks.registry.PermanentError",
        "items[<n>].price must be a number",
        "eventflow.tasks.builtin:_amount",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: raised(handlers.no_customer, event(n=5, customers=["Zed's"])),
        lambda: raised(handlers.bad_price, event(n=3, sku="B-7")),
        lambda: raised(builtin.order_created, event(items=[])),
        lambda: raised(json.loads, "[1,"),
    ],
)
def test_a_stored_error_and_traceback_give_the_same_fingerprint_as_the_live_exception(make):
    exc = make()
    error = f"{type(exc).__name__}: {exc}"  # as the worker stores it (events.last_error)
    text = "".join(traceback.format_exception(exc))
    assert fingerprint_text(error, text) == fingerprint_exception(exc)


def test_a_chained_exception_is_grouped_by_the_one_the_handler_let_out():
    def wrap(payload):
        try:
            payload["missing"]
        except KeyError as cause:
            raise RuntimeError(f"bad payload {payload['n']}") from cause

    exc = raised(wrap, {"n": 1})
    live = fingerprint_exception(exc)
    assert (live.exception, live.message) == ("RuntimeError", "bad payload <n>")
    assert live.frame.endswith(":wrap")
    text = "".join(traceback.format_exception(exc))
    assert "KeyError" in text  # the cause's traceback comes first in the text
    assert fingerprint_text(f"RuntimeError: {exc}", text) == live
