"""Errors become ``application/problem+json`` here, once, with fedseg's stable ``code``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from server.api.paths import allowed_methods
from shared.errors import FedsegError, code_for_status
from shared.routes import PROBLEM_CONTENT_TYPE
from shared.schemas import Problem

log = logging.getLogger(__name__)


_PUBLIC_5XX = {
    "unavailable": "the server cannot do this right now; try again later",
    "config_invalid": "the server is misconfigured; its log says how",
}


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response; 401s also say which scheme to use."""
    body = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, code=code, instance=instance
    )
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def note_scope_refusal(scope: Scope, status: int, code: str) -> None:
    """Count a 401, 403 or 413 for the audit log (aggregated per source and window).

    Also called by the middleware that refuses before a route runs (the auth gate, the
    body limit), so every refusal is counted whichever layer answered it.
    """
    services = getattr(scope["app"].state, "services", None)
    if services is not None and status in (401, 403, 413):
        client = scope.get("client")
        source = str(client[0]) if client else "unknown"
        services.audit.note_refusal(source=source, status=status, code=code, path=scope["path"])


def note_refusal(request: Request, status: int, code: str) -> None:
    """`note_scope_refusal` for a request the app's handlers answer."""
    note_scope_refusal(request.scope, status, code)


async def _fedseg_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FedsegError)
    detail = exc.message
    if exc.http_status >= 500:
        # The message may hold a child's stderr, a path or SQL: it goes to the log only.
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        detail = _PUBLIC_5XX.get(exc.code, "internal server error")
    note_refusal(request, exc.http_status, exc.code)
    return problem_response(exc.http_status, exc.code, detail, instance=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    extra = [error for error in errors if error.get("type") == "extra_forbidden"]
    first = (extra or errors or [{"loc": (), "msg": "invalid request"}])[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    detail = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    code = "extra_field" if extra else "invalid_input"
    return problem_response(422, code, detail, instance=request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = code_for_status(status)
    note_refusal(request, status, code)
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
    return problem_response(
        status, code, str(exc.detail), instance=request.url.path, headers=headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal", "internal server error", instance=request.url.path)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(FedsegError, _fedseg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
