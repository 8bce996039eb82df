"""GET /api/v1/openapi.json: generated from the routes, complete, and valid OpenAPI 3.1."""

import re

from openapi_spec_validator import OpenAPIV31SpecValidator

from eventflow.api.openapi import build_document

UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}


def _document(client) -> dict:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_document_is_served_without_a_token_and_is_valid_openapi_3_1(client):
    document = _document(client)
    assert document["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_every_api_route_of_the_url_map_is_documented_with_each_method(app, client):
    documented = {(path, method.upper()) for path, method, _ in _operations(_document(client))}
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") or rule.rule in ("/health", "/metrics")
        for method in rule.methods - UNDOCUMENTED_METHODS
    }
    assert len(routes) >= 16
    assert routes == documented


def test_a_route_without_an_operation_stops_the_document(app):
    app.add_url_rule("/api/v1/forgotten", "forgotten", lambda: "")
    try:
        build_document(app)
    except RuntimeError as exc:
        assert "/api/v1/forgotten" in str(exc)
    else:
        raise AssertionError("a route without @operation was left out silently")


def test_every_error_response_is_the_envelope_and_secured_routes_document_401(client):
    document = _document(client)
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and path not in ("/health", "/api/v1/health"):
                assert response["content"]["application/json"]["schema"] == envelope, (
                    path,
                    method,
                    status,
                )
        if "security" in operation:
            assert "401" in operation["responses"], (path, method)
        if "requestBody" in operation:
            assert {"400", "413"} <= set(operation["responses"]), (path, method)
    schemes = document["components"]["securitySchemes"]
    assert schemes["accessToken"] == {**schemes["accessToken"], "type": "http", "scheme": "bearer"}


def test_declared_security_is_what_the_routes_enforce(client):
    """Without a token, a secured operation answers 401 and an open one does not."""
    for path, method, operation in _operations(_document(client)):
        url = path.replace("{event_id}", "00000000-0000-0000-0000-000000000000")
        response = client.open(url, method=method.upper(), json={})
        if "security" in operation:
            assert response.status_code == 401, (path, method)
            assert response.get_json()["error"]["code"] == "missing_token"
        else:
            assert response.status_code != 401, (path, method)


def test_links_chain_register_login_ingest_and_read(client):
    document = _document(client)
    operation_ids = {op["operationId"] for _, _, op in _operations(document)}

    def links(path, method, status):
        return document["paths"][path][method]["responses"][status]["links"]

    register = links("/api/v1/auth/register", "post", "201")["LogIn"]
    assert register["operationId"] == "api.login"
    assert register["requestBody"] == {
        "email": "$request.body#/email",
        "password": "$request.body#/password",
    }
    login = links("/api/v1/auth/login", "post", "200")["CreateEvent"]
    assert login["parameters"] == {"header.Authorization": "Bearer {$response.body#/access_token}"}
    created = links("/api/v1/events", "post", "202")["GetEvent"]
    assert created == {
        "operationId": "api.get_event",
        "parameters": {"path.event_id": "$response.body#/eventId"},
    }
    every_target = {
        link["operationId"]
        for _, _, operation in _operations(document)
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    }
    assert every_target <= operation_ids


def test_schemas_come_from_the_models_that_check_requests(client):
    schemas = _document(client)["components"]["schemas"]
    new_event = schemas["NewEvent"]
    assert new_event["required"] == ["type", "payload"]
    assert new_event["additionalProperties"] is False
    assert new_event["properties"]["type"]["pattern"] == "^[A-Za-z0-9_.\\-]{1,64}$"
    events = schemas["NewEvents"]["properties"]["events"]
    assert (events["minItems"], events["maxItems"]) == (1, 1000)
    assert schemas["Status"]["enum"] == [
        "PENDING",
        "PROCESSING",
        "PROCESSED",
        "RETRYING",
        "FAILED",
        "DISCARDED",
    ]
