"""Errors become ``application/problem+json`` here, once, with fedseg's stable ``code``."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import FedsegError, code_for_status
from shared.routes import PROBLEM_CONTENT_TYPE
from shared.schemas import Problem

log = logging.getLogger(__name__)


def problem_response(
    status: int, code: str, detail: str, *, instance: str | None = None
) -> JSONResponse:
    """A problem+json response; 401s also say which scheme to use."""
    body = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, code=code, instance=instance
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


async def _fedseg_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FedsegError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return problem_response(exc.http_status, exc.code, exc.message, instance=request.url.path)


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
    return problem_response(status, code, str(exc.detail), instance=request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal", "internal server error", instance=request.url.path)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(FedsegError, _fedseg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
