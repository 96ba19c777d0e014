"""Route dependencies: the app's services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
    """Authenticate the bearer token (the security scheme only documents it)."""
    return await services.auth.authenticate(request.headers.get("authorization"))


PrincipalDep = Annotated[Principal, Depends(get_principal)]
