"""Health, readiness and metrics: no authentication, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import ServicesDep
from shared import routes

router = APIRouter(tags=["operations"])


@router.get(routes.HEALTHZ, summary="The process answers")
async def healthz() -> dict[str, str]:
    """Liveness: no dependency is checked."""
    return {"status": "ok"}


@router.get(
    routes.READYZ,
    summary="The database and the blob store are reachable",
    responses={503: {"description": "a dependency is down (problem+json)"}},
)
async def readyz(services: ServicesDep) -> dict[str, str]:
    """Readiness: a trivial query and a blob store write probe."""
    await services.operations.ready()
    return {"status": "ready"}


@router.get(routes.METRICS, summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Rounds, updates accepted and rejected by code, bytes in and out, aggregation time."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
