"""GET /api/v1/openapi.json, the API's document, and /api/docs, which renders it (Swagger UI)."""

from typing import Any

from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

from . import bp as api_bp
from .openapi import build_document
from .operation import operation

bp = Blueprint("docs", __name__)
DOCUMENT_KEY = "eventflow.openapi"


@api_bp.get("/openapi.json")
@operation(
    "This document: OpenAPI 3.1, generated from the code that checks requests",
    tag="operations",
    responses={200: dict[str, Any]},
)
def openapi_document() -> dict[str, Any]:
    # Built on first use: the routes it describes do not change while the app runs.
    if DOCUMENT_KEY not in current_app.extensions:
        current_app.extensions[DOCUMENT_KEY] = build_document(current_app)
    document: dict[str, Any] = current_app.extensions[DOCUMENT_KEY]
    return document


@bp.get("/api/docs")
def api_docs() -> ResponseReturnValue:
    return render_template("api_docs.html")
