"""Route dependencies: the app's services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.gate import PRINCIPAL_STATE_KEY
from server.services.auth import Principal
from server.services.container import Services

_bearer = HTTPBearer(
    auto_error=False,
    description="An admin or viewer token, or a site credential from enrollment.",
)


def get_services(request: Request) -> Services:
    """The services the app's lifespan built."""
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(
    request: Request,
    services: ServicesDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The caller `AuthGate` authenticated before the body was read.

    The security scheme only documents the bearer token; without the gate (an app
    built without it) the header is checked here instead.
    """
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
    if isinstance(principal, Principal):
        return principal
    return await services.auth.authenticate(request.headers.get("authorization"))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


MAX_ROUND = 100_000  # shared.schemas.RoundNumber's bound: a path integer beyond it is a 422
RoundPath = Annotated[int, Path(ge=0, le=MAX_ROUND, description="a round of the run (1..rounds)")]
VersionPath = Annotated[
    int, Path(ge=0, le=MAX_ROUND, description="a model version (0 is the initial model)")
]
_NAME = r"^[a-z0-9][a-z0-9._-]*$"  # shared.schemas.Name: no NUL, no slash, nothing unbounded
RunIdPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=_NAME, description="a run's id")
]
SiteNamePath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=_NAME, description="a site's name")
]
