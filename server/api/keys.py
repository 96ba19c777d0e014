"""The server key's rotation statements: public, since each is signed by the key it retires."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import ServicesDep
from shared import routes
from shared.schemas import SignedKeyRotation

router = APIRouter(tags=["site"])


@router.get(routes.KEY_ROTATIONS, summary="The signing key's rotation statements")
async def key_rotations(services: ServicesDep) -> list[SignedKeyRotation]:
    """Oldest first; a site follows them from the key it pinned, verifying every step."""
    return services.rotations.list()
