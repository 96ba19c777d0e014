"""The server's public signing key, for anyone who must pin it or verify a bundle."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import ServicesDep
from shared import routes
from shared.schemas import ServerKey

router = APIRouter(tags=["operations"])


@router.get(routes.SERVER_KEY, summary="The server's public signing key (no auth)")
async def server_key(services: ServicesDep) -> ServerKey:
    """Public PEM, raw base64, key id and fingerprint: public data, so no token is needed.

    Compare the fingerprint with the one the admin handed out before trusting it.
    """
    return services.sites.server_key()
