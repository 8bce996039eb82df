"""The OpenAPI 3.1 document, generated from the routes' @operation declarations.

It walks the app's URL map: every /api/v1 route must declare an operation (building the
document fails otherwise), and /health and /metrics declare theirs too. Schemas come from the
same pydantic models that parse requests and serialise responses; pydantic writes JSON Schema
2020-12, the dialect of OpenAPI 3.1.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from flask import Flask
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from ..schemas.responses import ErrorEnvelope
from .operation import TEXT, Operation

API_PREFIX = "/api/v1/"
REF = "#/components/schemas/{model}"
ERROR_MEANINGS = {
    400: "The request is malformed; the message names the field and the rule.",
    401: "No valid token (missing_token, invalid_token, token_expired, token_revoked).",
    403: "forbidden: the token's user may not do this.",
    404: "Not found.",
    409: "Conflict.",
    413: "payload_too_large: the body is over 1 MiB.",
    429: "rate_limited: try again after Retry-After seconds.",
    503: "database_unavailable: PostgreSQL cannot be reached; nothing was written.",
}
# gunicorn answers these itself, before the app sees the request, for any route (in the error
# envelope: eventflow/server.py); nginx in front does the same.
SERVER_LIMITS = {
    414: "uri_too_long: the URL with its query string is over the server's limit (4 KB).",
    431: "request_header_fields_too_large: the headers are over the server's limits.",
}
SECURITY_SCHEMES = {
    "accessToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "access_token from POST /api/v1/auth/login (HS256; 15 minutes).",
    },
    "refreshToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "refresh_token from POST /api/v1/auth/login (7 days).",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "access": [{"accessToken": []}],
    "refresh": [{"refreshToken": []}],
    "access_or_refresh": [{"accessToken": []}, {"refreshToken": []}],
}
TAGS = [
    {"name": "auth", "description": "Accounts, tokens and sessions."},
    {"name": "events", "description": "Ingest events and follow them."},
    {"name": "dlq", "description": "The dead-letter queue and replays (admins)."},
    {"name": "operations", "description": "Health, metrics and this document."},
]
DESCRIPTION = """Event ingestion and processing. Every error, 4xx or 5xx, is
`{"error": {"code": "snake_case", "message": "…"}}`. Authenticate with
`Authorization: Bearer <access_token>` from `POST /api/v1/auth/login`."""


def operations(app: Flask) -> list[tuple[str, str, str, Operation]]:
    """(path, method, endpoint, operation) of every documented route, in path order."""
    found = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        spec = getattr(app.view_functions[rule.endpoint], "openapi_operation", None)
        if spec is None:
            if rule.rule.startswith(API_PREFIX):
                raise RuntimeError(f"{rule.rule} ({rule.endpoint}) declares no @operation")
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((path, method.lower(), rule.endpoint, spec))
    return found


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app's API."""
    found = operations(app)
    endpoints = {endpoint for _, _, endpoint, _ in found}
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint, spec in found:
        paths.setdefault(path, {})[method] = _operation_object(endpoint, spec, schemas, endpoints)
    return {
        "openapi": "3.1.0",
        "info": {"title": "EventFlow API", "version": "1", "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": schemas.definitions(), "securitySchemes": SECURITY_SCHEMES},
    }


class _Schemas:
    """Collects the models an operation mentions; their JSON Schemas come out together, so
    shared models are one component each."""

    def __init__(self) -> None:
        self._inputs: list[tuple[int, JsonSchemaMode, TypeAdapter[Any]]] = []
        self._refs: list[dict[str, Any]] = []
        self._extra: dict[str, Any] = {}

    def ref(self, kind: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        """A placeholder for `kind`'s schema, filled in by definitions()."""
        placeholder: dict[str, Any] = {}
        self._inputs.append((len(self._inputs), mode, TypeAdapter(kind)))
        self._refs.append(placeholder)
        return placeholder

    def fields(self, model: type[BaseModel]) -> dict[str, Any]:
        """The JSON Schema of each field of a parameter model, by its name on the wire."""
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        self._extra.update(schema.get("$defs", {}))
        properties: dict[str, Any] = schema.get("properties", {})
        return properties

    def definitions(self) -> dict[str, Any]:
        mapping, definitions = TypeAdapter.json_schemas(self._inputs, ref_template=REF)
        for (key, _mode), schema in mapping.items():
            self._refs[key].update(schema)
        return dict(sorted({**self._extra, **definitions.get("$defs", {})}.items()))


def _operation_object(
    endpoint: str, spec: Operation, schemas: _Schemas, endpoints: set[str]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "operationId": endpoint,
        "summary": spec.summary,
        "tags": [spec.tag],
    }
    if spec.description:
        result["description"] = spec.description
    parameters = [
        *_parameters(spec.path, "path", schemas),
        *_parameters(spec.query, "query", schemas),
        *_parameters(spec.headers, "header", schemas),
    ]
    if parameters:
        result["parameters"] = parameters
    if spec.body is not None:
        result["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": schemas.ref(spec.body, "validation")}},
        }
    responses = {}
    for status, kind in spec.responses.items():
        responses[str(status)] = _response(status, kind, spec, schemas, endpoints)
    for status, meaning in {**SERVER_LIMITS, **spec.errors}.items():
        responses[str(status)] = _error_response(status, meaning, schemas)
    result["responses"] = dict(sorted(responses.items()))
    if spec.auth is not None:
        result["security"] = SECURITY[spec.auth]
    return result


def _parameters(
    model: type[BaseModel] | None, where: str, schemas: _Schemas
) -> list[dict[str, Any]]:
    if model is None:
        return []
    properties = schemas.fields(model)
    found = []
    for name, field in model.model_fields.items():
        wire_name = field.alias or name
        if wire_name not in properties:  # SkipJsonSchema: the operation's description tells
            continue
        schema = dict(properties[wire_name])
        if not field.is_required():
            schema = _without_null(schema)
        schema.pop("title", None)
        description = schema.pop("description", None) or field.description
        parameter = {
            "name": wire_name,
            "in": where,
            "required": where == "path" or field.is_required(),
            "schema": schema,
        }
        if description:
            parameter["description"] = description
        found.append(parameter)
    return found


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent, never null: its schema without the null branch."""
    branches = schema.get("anyOf")
    if branches and {"type": "null"} in branches:
        rest = [branch for branch in branches if branch != {"type": "null"}]
        merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**rest[0], **merged} if len(rest) == 1 else {**merged, "anyOf": rest}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _response(
    status: int, kind: Any, spec: Operation, schemas: _Schemas, endpoints: set[str]
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if kind == TEXT:
        response["content"] = {TEXT: {"schema": {"type": "string"}}}
    elif kind is not None:
        schema = schemas.ref(kind, "serialization")
        response["content"] = {"application/json": {"schema": schema}}
    if status in spec.response_media:
        response.setdefault("content", {})[spec.response_media[status]] = {
            "schema": {"type": "string"}
        }
    headers = spec.response_headers.get(status)
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    links = spec.links.get(status)
    if links:
        response["links"] = {}
        for name, link in links.items():
            if link.operation not in endpoints:
                raise RuntimeError(f"link {name} targets {link.operation}, not a documented route")
            target: dict[str, Any] = {"operationId": link.operation}
            if link.parameters:
                target["parameters"] = dict(link.parameters)
            if link.body is not None:
                target["requestBody"] = link.body
            if link.description:
                target["description"] = link.description
            response["links"][name] = target
    return response


def _error_response(status: int, meaning: str, schemas: _Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": meaning or ERROR_MEANINGS.get(status) or HTTPStatus(status).phrase,
        "content": {"application/json": {"schema": schemas.ref(ErrorEnvelope, "serialization")}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the limit's window ends.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response
