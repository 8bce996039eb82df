"""Parse input against a schema: strict JSON, then the model; any failure is one ApiError.

The first failure wins, in the order pydantic checks: a body's shape and unknown fields first
(the models' before-validators), then its fields in declaration order, list items by index.
Its message names the field: "type must be …" at the top of a body, "events[7].type: must be …"
deeper down, "the body must be …" for the body itself.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NoReturn, TypeVar, cast, get_args, get_origin

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import ApiError
from .requests import EventPath
from .rules import Invalid

Location = Literal["body", "query", "path", "header"]
T = TypeVar("T")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


# Digits to "9", all else to " ": 19 nines in a row may be an integer beyond 64 bits, which
# orjson would turn into a float. (A regular expression takes twenty times as long.)
_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER = b"9" * 19


def parse_json(raw: bytes) -> object:
    """Bytes parsed as strict JSON, or a 400 saying why not.

    Strict: NaN, Infinity and numbers beyond a double's range are refused (PostgreSQL's jsonb
    refuses them too); integers stay exact at any size; of repeated keys the last one wins.
    orjson parses in under half the standard library's time (with its float hook) and refuses
    what strict JSON refuses; what it refuses or might change (a long run of digits: an
    integer beyond 64 bits would become a float) goes to the standard library, which keeps big
    integers exact and words the 400.
    """
    if not raw or raw.isspace():
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_NINES):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


def parse_body(model: type[T], raw: bytes) -> T:
    """A JSON request body as `model`, or the 400 that says what is wrong."""
    return validate(model, parse_json(raw), "body")


def parse_query(model: type[T], args: Mapping[str, str]) -> T:
    """Query-string arguments (the first value of each) as `model`, or a 400."""
    return validate(model, dict(args.items()), "query")


def parse_event_id(raw: str) -> uuid.UUID:
    """An event id from a URL, or the 404 of an unknown id: a malformed one names no event."""
    return validate(EventPath, {"event_id": raw}, "path").event_id


def validate(model: type[T], data: Any, location: Location) -> T:
    """`data` checked against a model; a ValidationError becomes the ApiError of its rule."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    try:
        return cast(T, adapter.validate_python(data))
    except ValidationError as exc:
        raise as_api_error(exc, model, location) from None


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def as_api_error(exc: ValidationError, model: type, location: Location) -> ApiError:
    """The first failure of a validation as the API's error: code, status and message."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    context = error.get("ctx") or {}
    if "status" in context:  # raised by a validator of ours, with its code (rules.Invalid.error)
        code, reason = error["type"], error["msg"]
        status, whole = int(context["status"]), bool(context["whole"])
    else:
        rule = _rule_at(model, loc)
        if rule is None:  # a check without a rule of ours: still a 400 naming the field
            code, reason, status, whole = "invalid_request", error["msg"].lower(), 400, False
        else:
            code, status, whole = rule.code, rule.status, rule.whole
            reason = rule.message(error.get("input")) if whole else rule.reason
    return ApiError(status, code, reason if whole else _message(location, loc, reason))


def _message(location: Location, loc: tuple[int | str, ...], reason: str) -> str:
    if not loc:
        return f"the body {reason}" if location == "body" else reason
    where = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    return f"{where} {reason}" if len(loc) == 1 else f"{where}: {reason}"


def _rule_at(model: type, loc: tuple[int | str, ...]) -> Invalid | None:
    """The rule of the deepest field on the error's path that has one."""
    annotation: Any = model
    rule = None
    for part in loc:
        if isinstance(part, int):  # an item of a list
            annotation = next(iter(get_args(annotation)), None)
            continue
        holder = _model_in(annotation)
        fields = holder.model_fields.items() if holder is not None else ()
        field = next((f for name, f in fields if part in (name, f.alias)), None)
        if field is None:
            break
        rule = _rule_of(field.metadata, field.annotation) or rule
        annotation = field.annotation
    return rule


def _rule_of(metadata: list[Any], annotation: Any) -> Invalid | None:
    """The Invalid marker of a field: on the field, or on the rule type in its `X | None`."""
    for candidate in [*metadata, *(m for arg in get_args(annotation) for m in _annotated(arg))]:
        if isinstance(candidate, Invalid):
            return candidate
    return None


def _annotated(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is not Annotated:
        return ()
    metadata: tuple[Any, ...] = annotation.__metadata__
    return metadata


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as `Model | None`."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
