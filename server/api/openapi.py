"""The OpenAPI document, made to say what the server does: every status, problem+json errors.

Routes declare the statuses only they produce (`problems(404, 409)`); `install`
adds the ones the edge gives every route of a kind (401/403/429 where a credential
is needed, 413 and 422 where a body or parameters are parsed), and documents every
4xx/5xx answer as ``application/problem+json`` with the `Problem` schema, which is
what `server.api.problems` sends. schemathesis checks the two agree (tests/api).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shared.routes import PROBLEM_CONTENT_TYPE
from shared.schemas import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_DESCRIPTIONS = {
    400: "the body is not what the content type says (not UTF-8 JSON, or a bad envelope)",
    401: "no credential, or one the server does not accept",
    403: "the credential may not do this",
    404: "no such run, round, site or model version",
    409: "the request disagrees with the current state",
    413: "the body is larger than the server accepts",
    416: "the range selects no byte of the bundle",
    422: "the request is not valid (body, path or query)",
    429: "too many failed attempts from this address (see Retry-After)",
    503: "a dependency is unavailable; try again later",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with a problem+json body."""
    return {status: _problem(status) for status in statuses}


def _problem(status: int, description: str | None = None) -> dict[str, Any]:
    text = description or _DESCRIPTIONS.get(status, "an error (problem+json)")
    return {"description": text, "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}}


def _complete(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    added: list[int] = []
    if operation.get("security"):
        added += [401, 403, 429]
    if operation.get("parameters"):
        added.append(422)
    if "requestBody" in operation:
        added += [400, 413, 422]
    for status in added:
        responses.setdefault(str(status), _problem(status))
    for code, response in responses.items():
        if code[0] in "45" and code != "416":  # a 416 has no body, only Content-Range
            # FastAPI documents its own 422 as application/json HTTPValidationError.
            response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}
            response.setdefault("description", _DESCRIPTIONS.get(int(code), "an error"))


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` by one that completes the generated document once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            tags=app.openapi_tags,
            routes=app.routes,
        )
        for path_item in document.get("paths", {}).values():
            for operation in path_item.values():
                _complete(operation)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
