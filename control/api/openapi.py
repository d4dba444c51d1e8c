"""The OpenAPI 3.1 document, generated from ``OPERATIONS`` and the pydantic
models' JSON schemas; nothing in it is written by hand, so it cannot drift
from the handlers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from control.api.models import ErrorBody
from control.api.operation import Operation
from control.api.routes import OPERATIONS

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")
_REASONS = {
    200: "OK",
    201: "Created",
    304: "Not modified before the wait ended",
    400: "The body is not JSON",
    401: "No or unknown bearer token",
    403: "The token lacks the scope",
    404: "Not found",
    409: "Conflict",
    422: "Invalid: the problems name each field",
    503: "Shutting down: poll again later",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _parameters(op: Operation, query_schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        schema = query_schemas[op.query.__name__]
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    return params


def _operation(op: Operation, query_schemas: dict[str, Any]) -> dict[str, Any]:
    ok = 201 if op.method == "POST" and op.path == "/v1/instances" else 200
    success: dict[str, Any] = {"description": _REASONS[ok]}
    if op.response is not None:
        success["content"] = _json(op.response)
    responses: dict[str, Any] = {str(ok): success}
    errors = list(op.statuses)
    if op.scope != "none":
        errors += [401, 403] if op.scope == "write" else [401]
    if op.body is not None:
        errors += [400, 422]
    if op.query is not None or "{" in op.path:
        errors.append(422)
    for status in sorted(set(errors)):
        entry: dict[str, Any] = {"description": _REASONS[status]}
        if status != 304:
            entry["content"] = _json(ErrorBody)
        responses[str(status)] = entry
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method.lower() + re.sub(r"[^a-z0-9]+", "_", op.path.lower()),
        "responses": responses,
    }
    if op.scope != "none":
        doc["security"] = [{"bearer": [op.scope]}]
    params = _parameters(op, query_schemas)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": _json(op.body)}
    return doc


def openapi_document() -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {ErrorBody.__name__: ErrorBody}
    for op in OPERATIONS:
        for model in (op.body, op.response):
            if model is not None:
                models[model.__name__] = model
    _, top = models_json_schema(
        [(model, "validation") for model in models.values()], ref_template=_REF
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    query_schemas = {
        op.query.__name__: op.query.model_json_schema(ref_template=_REF)
        for op in OPERATIONS
        if op.query is not None
    }
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, query_schemas)
    paths[OPENAPI_PATH] = {
        "get": {
            "summary": "This document",
            "operationId": "get_openapi",
            "responses": {"200": {"description": "OK", "content": {"application/json": {}}}},
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics: config version, proxies, refusals",
            "operationId": "get_metrics",
            "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "meshcontrol", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
