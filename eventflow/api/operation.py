"""`@operation`: what a route takes and answers, declared once, enforced and documented.

The decorator goes right above the view (below the auth and rate-limit decorators, which run
first). On each request it parses the path, the query string and the JSON body against their
models (a 400, or a 404 for an id in the path, says what is wrong), calls the view with them as
`body=` and `query=`, and serialises what the view returns (a model, a dict or an ORM object)
through the model declared for that status. openapi.py builds GET /api/v1/openapi.json from the
same declarations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Response, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, TypeAdapter

from ..schemas.parsing import parse_json, parse_query, validate

# A response without a JSON body: `None` (no content) or one of these media types.
TEXT = "text/plain"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: a value of this response feeds a parameter or the body of another
    operation (by endpoint name), as runtime expressions ("$response.body#/eventId")."""

    operation: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """Everything the document says about one route, and what the route checks."""

    summary: str
    tag: str
    responses: Mapping[int, Any]  # status -> response type (model or union), None, or TEXT
    errors: Mapping[int, str] = field(default_factory=dict)  # status -> what it means here
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    # The use case checks the body and headers itself (ingest, on its hot path): the models
    # only describe them.
    checked_by_use_case: bool = False
    auth: str | None = None  # "access", "refresh" or "access_or_refresh"
    description: str = ""
    links: Mapping[int, Mapping[str, Link]] = field(default_factory=dict)
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    # status -> another media type the route may answer with on request (e.g. text/csv)
    response_media: Mapping[int, str] = field(default_factory=dict)
    adapters: Mapping[int, TypeAdapter[Any]] = field(default_factory=dict)


def operation(
    summary: str, **declared: Any
) -> Callable[[Callable[..., object]], Callable[..., ResponseReturnValue]]:
    """Declare the route's inputs and answers (see Operation); parse and serialise by them."""
    responses = declared["responses"]
    adapters = {
        status: TypeAdapter(kind)
        for status, kind in responses.items()
        if kind is not None and kind != TEXT
    }
    spec = Operation(summary=summary, adapters=adapters, **declared)

    def decorate(view: Callable[..., object]) -> Callable[..., ResponseReturnValue]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> ResponseReturnValue:
            if spec.path is not None:
                kwargs = dict(validate(spec.path, kwargs, "path"))
            if spec.query is not None:
                kwargs["query"] = parse_query(spec.query, request.args)
            if spec.body is not None and not spec.checked_by_use_case:
                kwargs["body"] = validate(spec.body, _json_body(spec.body_required), "body")
            return _serialise(spec, view(**kwargs))

        wrapper.openapi_operation = spec  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _json_body(required: bool) -> object:
    raw = request.get_data(cache=True)  # over 1 MiB -> 413 before we get here
    if not required and not raw.strip():
        return {}
    return parse_json(raw)


def _serialise(spec: Operation, result: Any) -> ResponseReturnValue:
    """The view's (value, status, headers) with the value dumped by its status's model."""
    if isinstance(result, Response):
        return result
    parts = result if isinstance(result, tuple) else (result,)
    value = parts[0]
    status = parts[1] if len(parts) > 1 else 200
    headers = parts[2] if len(parts) > 2 else {}
    if status not in spec.responses:
        raise RuntimeError(f"{request.endpoint} answered {status}, which it does not document")
    adapter = spec.adapters.get(status)
    if adapter is not None:
        # Through the declared model: the body sent is the body documented, whatever the view
        # returned (a model, a dict, an ORM object).
        value = adapter.dump_python(
            adapter.validate_python(value, from_attributes=True), mode="json"
        )
    return value, status, headers
