"""Site routes: enroll, long-poll for tasks, report status, upload or decline, fetch bundles."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from server.api.deps import (
    PrincipalDep,
    RoundPath,
    RunIdPath,
    ServicesDep,
    VersionPath,
)
from server.api.openapi import problems
from server.api.ranges import parse_range
from shared import routes
from shared.bundle import Bundle
from shared.errors import InvalidInput, PayloadTooLarge
from shared.privacy import DeclineReceipt, SignedDecline
from shared.schemas import EnrollRequest, EnrollResponse, StatusReport, TaskPoll, UpdateReceipt

router = APIRouter(tags=["site"])
bundles = APIRouter(tags=["models"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "A sealed update envelope (shared/updates.py format).",
        "content": {routes.UPDATE_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    routes.ENROLL, summary="Enroll a site with its one-time token", responses=problems(401, 429)
)
async def enroll(request: EnrollRequest, services: ServicesDep) -> EnrollResponse:
    """Registers the site's Ed25519 key; returns its credential and the server key to pin."""
    return await services.sites.enroll(request)


@router.get(routes.TASKS_NEXT, summary="Long-poll for the next task")
async def next_task(
    principal: PrincipalDep,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=300, description="seconds to wait for a task")] = 0,
) -> TaskPoll:
    """A signed task for the oldest open round the site has not sent an update to yet."""
    return await services.tasks.next_task(principal, wait)


@router.post(
    routes.STATUS,
    status_code=204,
    summary="Report progress in a round",
    responses=problems(404),
)
async def report_status(
    report: StatusReport, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """For dashboards; the protocol does not depend on it."""
    await services.tasks.report(principal, report)
    return Response(status_code=204)


@router.put(
    routes.UPDATES,
    summary="Upload a sealed update (idempotent)",
    openapi_extra=_UPLOAD_BODY,
    responses=problems(400, 404, 409, 413, 422),
)
async def upload_update(
    run_id: RunIdPath,
    round: RoundPath,
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
) -> UpdateReceipt:
    """Checked, stored and counted before the receipt; the same bytes get the same receipt."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise InvalidInput("Content-Length must be a number")
    if declared is not None and len(declared.lstrip("0")) > 18:  # never int() of 5000 digits
        raise PayloadTooLarge("the declared body is larger than the server accepts")
    return await services.intake.accept_update(
        principal,
        run_id,
        round,
        request.stream(),
        int(declared) if declared is not None else None,
    )


@router.post(
    routes.DECLINE,
    summary="Decline a round with a signed reason (idempotent)",
    responses=problems(400, 404, 409),
)
async def decline_round(
    run_id: RunIdPath,
    round: RoundPath,
    signed: SignedDecline,
    principal: PrincipalDep,
    services: ServicesDep,
) -> DeclineReceipt:
    """Verified with the site's enrolled key first; the round goes on without the site."""
    return await services.declines.decline(principal, run_id, round, signed)


@bundles.get(
    routes.MODEL_BUNDLE,
    summary="Download a signed model bundle (tar; ETag and Range)",
    response_class=Response,
    responses={
        200: {"content": {routes.BUNDLE_CONTENT_TYPE: {}}, "description": "the bundle"},
        206: {"description": "the requested byte range"},
        304: {"description": "not modified (If-None-Match)"},
        416: {"description": "range not satisfiable (Content-Range: bytes */size)"},
        **problems(404, 503),
    },
)
async def download_bundle(
    run_id: RunIdPath,
    version: VersionPath,
    principal: PrincipalDep,
    services: ServicesDep,
    range_header: Annotated[str | None, Header(alias="range")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    """Bundles never change once signed, so the ETag is the tar's sha256."""
    resuming = range_header is not None and not range_header.startswith("bytes=0-")
    bundle = await services.runs.bundle(run_id, version, principal, record=not resuming)
    response = _bundle_response(bundle, range_header, if_none_match, if_range)
    services.metrics.bytes_out.inc(int(response.headers.get("content-length", "0")))
    return response


def _bundle_response(
    bundle: Bundle, range_header: str | None, if_none_match: str | None, if_range: str | None
) -> Response:
    etag = f'"{bundle.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    size = len(bundle.data)
    wanted = None
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        wanted = parse_range(range_header, size)
    if wanted is None:
        return Response(bundle.data, media_type=routes.BUNDLE_CONTENT_TYPE, headers=headers)
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {wanted.first}-{wanted.last}/{size}"
    return Response(
        memoryview(bundle.data)[wanted.first : wanted.last + 1],
        status_code=206,
        media_type=routes.BUNDLE_CONTENT_TYPE,
        headers=headers,
    )
