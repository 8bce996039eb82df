"""What the API accepts and answers, as pydantic models: they check requests, shape responses,
and are the OpenAPI document's schemas (api/openapi.py).

rules.py      each field's rule, written once: event types, ids, keys, paging, cursors
requests.py   request bodies, query strings, paths and headers
responses.py  response bodies
parsing.py    strict JSON, then a model; any failure is one ApiError with the field's code
"""
