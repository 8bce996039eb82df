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
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import ApiError
from .rules import EventId, Invalid

Location = Literal["body", "query", "path", "header"]
T = TypeVar("T")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def parse_json(raw: bytes) -> object:
    """Bytes parsed as strict JSON, or a 400 saying why not.

    Strict: NaN, Infinity and numbers beyond a double's range are refused (PostgreSQL's jsonb
    refuses them too); integers stay exact at any size; of repeated keys the last one wins.
    """
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
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


_EVENT_ID = TypeAdapter(EventId)


def parse_event_id(raw: str) -> uuid.UUID:
    """An event id from a URL, or the 404 of an unknown id: a malformed one names no event."""
    return validate(_EVENT_ID, raw, "path")


def validate(schema: type[T] | TypeAdapter[T], data: Any, location: Location) -> T:
    """`data` checked against a model (or a TypeAdapter); a ValidationError becomes an ApiError."""
    if isinstance(schema, TypeAdapter):
        adapter, root = schema, None
    else:
        adapter, root = _adapter(schema), schema
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise as_api_error(exc, root, location) from None


_ADAPTERS: dict[type, TypeAdapter] = {}


def _adapter(model: type) -> TypeAdapter:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


def as_api_error(exc: ValidationError, root: type | None, location: Location) -> ApiError:
    """The first failure of a validation as the API's error: code, status and message."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    context = error.get("ctx") or {}
    if "status" in context:  # one of our rules (rules.Invalid) or models
        code, reason = error["type"], error["msg"]
        status, whole = int(context["status"]), bool(context["whole"])
    else:
        rule = _rule_at(root, loc) if error["type"] == "missing" else None
        if rule is not None:
            code, reason, status, whole = rule.code, rule.reason, rule.status, rule.whole
        else:  # a check without a rule of ours: still a 400 naming the field
            code, reason, status, whole = "invalid_request", error["msg"].lower(), 400, False
    return ApiError(status, code, reason if whole else _message(location, loc, reason))


def _message(location: Location, loc: tuple, reason: str) -> str:
    if not loc:
        return f"the body {reason}" if location == "body" else reason
    where = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    return f"{where} {reason}" if len(loc) == 1 else f"{where}: {reason}"


def _rule_at(root: type | None, loc: tuple) -> Invalid | None:
    """The rule of the field at `loc` (for a missing field, which no validator of its own saw)."""
    annotation: Any = root
    rule = None
    for part in loc:
        if isinstance(part, int):
            annotation, rule = next(iter(get_args(annotation)), None), None
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = next(
            (f for name, f in annotation.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return None
        rule = next((m for m in field.metadata if isinstance(m, Invalid)), None)
        annotation = field.annotation
    return rule
