"""Admin and viewer routes: sites, runs, rounds, models and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from server.api.deps import PrincipalDep, RoundPath, RunIdPath, ServicesDep, SiteNamePath
from server.api.openapi import problems
from shared import routes
from shared.schemas import (
    AuditEvent,
    AuditVerification,
    ModelVersion,
    RoundInfo,
    RunCreate,
    RunInfo,
    SiteCreate,
    SiteCreated,
    SiteInfo,
    SiteReissue,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)

sites = APIRouter(tags=["sites"])
runs = APIRouter(tags=["runs"])
audit = APIRouter(tags=["audit"])
tokens = APIRouter(tags=["tokens"])

_SITE_EXAMPLES = {
    "hospital": {
        "summary": "register a hospital",
        "value": {"name": "charite-berlin", "token_ttl_s": 86400},
    }
}
_RUN_EXAMPLES = {
    "small": {
        "summary": "three sites, five rounds of the small model",
        "value": {
            "name": "glioma-2026-q1",
            "config": {
                "model": "segresnet-small",
                "rounds": 5,
                "sites": ["site-a", "site-b", "site-c"],
                "min_sites": 2,
                "round_timeout_s": 3600,
                "training": {"local_steps": 50, "batch_size": 2},
            },
        },
    }
}


@sites.post(
    routes.SITES, status_code=201, summary="Register a site (admin)", responses=problems(409)
)
async def create_site(
    request: Annotated[SiteCreate, Body(openapi_examples=_SITE_EXAMPLES)],
    principal: PrincipalDep,
    services: ServicesDep,
) -> SiteCreated:
    """Returns the site's one-time enrollment token; it is never shown again."""
    return await services.sites.create(request, principal)


@sites.get(routes.SITES, summary="List sites")
async def list_sites(principal: PrincipalDep, services: ServicesDep) -> list[SiteInfo]:
    """Every registered site with its status and key fingerprint."""
    return await services.sites.list_sites(principal)


@sites.post(routes.SITE_REVOKE, summary="Revoke a site (admin)", responses=problems(404))
async def revoke_site(
    name: SiteNamePath, principal: PrincipalDep, services: ServicesDep
) -> SiteInfo:
    """The site's credential stops working at once; this cannot be undone."""
    return await services.sites.revoke(name, principal)


@sites.post(
    routes.SITE_REISSUE,
    status_code=201,
    summary="Re-issue a site's token (admin)",
    responses=problems(404),
)
async def reissue_site_token(
    name: SiteNamePath,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Annotated[SiteReissue | None, Body()] = None,
) -> SiteCreated:
    """A new one-time token; the old token and the site's enrolled key stop working."""
    return await services.sites.reissue_token(name, request or SiteReissue(), principal)


@runs.post(
    routes.RUNS,
    status_code=201,
    summary="Create a run (admin)",
    responses=problems(404, 409),
)
async def create_run(
    request: Annotated[RunCreate, Body(openapi_examples=_RUN_EXAMPLES)],
    principal: PrincipalDep,
    services: ServicesDep,
) -> RunInfo:
    """Validates the model and the sites; the run waits in status ``created``."""
    return await services.runs.create(request, principal)


@runs.get(routes.RUNS, summary="List runs")
async def list_runs(principal: PrincipalDep, services: ServicesDep) -> list[RunInfo]:
    """Every run, oldest first."""
    return await services.runs.list_runs(principal)


@runs.get(routes.RUN, summary="Get a run", responses=problems(404))
async def get_run(run_id: RunIdPath, principal: PrincipalDep, services: ServicesDep) -> RunInfo:
    """One run with its configuration and current round."""
    return await services.runs.get(run_id, principal)


@runs.post(routes.RUN_START, summary="Start a run (admin)", responses=problems(404, 409, 503))
async def start_run(run_id: RunIdPath, principal: PrincipalDep, services: ServicesDep) -> RunInfo:
    """Signs model version 0 and opens round 1."""
    return await services.runs.start(run_id, principal)


@runs.post(routes.RUN_STOP, summary="Stop a run (admin)", responses=problems(404, 409))
async def stop_run(run_id: RunIdPath, principal: PrincipalDep, services: ServicesDep) -> RunInfo:
    """Cancels the run and its open round."""
    return await services.runs.stop(run_id, principal)


@runs.get(routes.ROUNDS, summary="List a run's rounds", responses=problems(404))
async def list_rounds(
    run_id: RunIdPath, principal: PrincipalDep, services: ServicesDep
) -> list[RoundInfo]:
    """Each round with per-site progress."""
    return await services.runs.rounds(run_id, principal)


@runs.get(routes.ROUND, summary="Get a round with per-site progress", responses=problems(404))
async def get_round(
    run_id: RunIdPath, round: RoundPath, principal: PrincipalDep, services: ServicesDep
) -> RoundInfo:
    """Status, deadline, and what each member site has done."""
    return await services.runs.round(run_id, round, principal)


@runs.get(routes.MODELS, summary="List a run's model versions", responses=problems(404))
async def list_models(
    run_id: RunIdPath, principal: PrincipalDep, services: ServicesDep
) -> list[ModelVersion]:
    """Version v is the consensus after round v; version 0 is the initial model."""
    return await services.runs.models(run_id, principal)


@audit.get(routes.AUDIT, summary="Read the audit log")
async def read_audit(
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int, Query(ge=0, description="return events with a larger id")] = 0,
    newest: Annotated[
        bool, Query(description="the newest `limit` events, newest first (else oldest first)")
    ] = False,
) -> list[AuditEvent]:
    """Append-only: who did what, when, to what."""
    return await services.operations.audit(principal, limit=limit, after=after, newest=newest)


@audit.get(routes.AUDIT_VERIFY, summary="Check the audit log's hash chain")
async def verify_audit(principal: PrincipalDep, services: ServicesDep) -> AuditVerification:
    """Recomputes every event's hash; names the first broken link and the head hash."""
    return await services.audit.verify(principal)


@tokens.post(routes.TOKENS, status_code=201, summary="Mint an admin or viewer token (admin)")
async def create_token(
    request: TokenCreate, principal: PrincipalDep, services: ServicesDep
) -> TokenCreated:
    """The secret is in this answer only; the token expires (90 days by default)."""
    return await services.tokens.create(request, principal)


@tokens.get(routes.TOKENS, summary="List admin and viewer tokens (admin)")
async def list_tokens(principal: PrincipalDep, services: ServicesDep) -> list[TokenInfo]:
    """Every token with its role, label, expiry and status; never a secret."""
    return await services.tokens.list_tokens(principal)


@tokens.post(routes.TOKEN_REVOKE, summary="Revoke an admin or viewer token (admin)")
async def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    principal: PrincipalDep,
    services: ServicesDep,
) -> TokenInfo:
    """Refused from the next request on; the last usable admin token cannot be revoked."""
    return await services.tokens.revoke(token_id, principal)
