"""The server's public signing key and its rotation statements: public data, no token.

Anyone who must pin the key or verify a bundle can fetch it (and compare the
fingerprint with the one the admin handed out); each rotation statement is signed
by the key it retires, so a site follows them from the key it pinned.
"""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import ServicesDep
from shared import routes
from shared.schemas import ServerKey, SignedKeyRotation

router = APIRouter()


@router.get(
    routes.SERVER_KEY, tags=["operations"], summary="The server's public signing key (no auth)"
)
async def server_key(services: ServicesDep) -> ServerKey:
    """Public PEM, raw base64, key id and fingerprint: public data, so no token is needed.

    Compare the fingerprint with the one the admin handed out before trusting it.
    """
    return services.sites.server_key()


@router.get(routes.KEY_ROTATIONS, tags=["site"], summary="The signing key's rotation statements")
async def key_rotations(services: ServicesDep) -> list[SignedKeyRotation]:
    """Oldest first; a site follows them from the key it pinned, verifying every step."""
    return services.rotations.list()
