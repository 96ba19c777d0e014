"""Sites: registration by an admin, one-time enrollment by the hospital, revocation."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.db.engine import Database
from server.db.repositories import site_info
from server.services.auth import ENROLL_PREFIX, SITE_PREFIX, Principal, hash_secret, new_secret, now
from shared import crypto
from shared.errors import AuthError, Conflict, FedsegError, InvalidInput, NotFound
from shared.schemas import EnrollRequest, EnrollResponse, SiteCreate, SiteCreated, SiteInfo


class SiteService:
    """Everything about sites; the server's public key is what enrollment hands out."""

    def __init__(
        self, db: Database, server_key: Ed25519PublicKey, *, offline_after_s: float = 120.0
    ) -> None:
        self._db = db
        self._server_key = server_key
        self._offline_after_s = offline_after_s

    async def create(self, request: SiteCreate, actor: Principal) -> SiteCreated:
        """Register a site and mint its one-time enrollment token."""
        actor.require_admin()
        token = new_secret(ENROLL_PREFIX)
        moment = now()
        expires_at = moment + timedelta(seconds=request.token_ttl_s)
        async with self._db.transaction() as repo:
            if await repo.site_by_name(request.name) is not None:
                raise Conflict(f"site {request.name} already exists", code="site_exists")
            site = await repo.add_site(request.name, moment)
            await repo.add_enrollment_token(
                site_id=site.id, token_hash=hash_secret(token), now=moment, expires_at=expires_at
            )
            await repo.audit(
                actor=actor.actor,
                action="site.created",
                target=f"site:{site.name}",
                now=moment,
                expires_at=expires_at.isoformat(),
            )
            info = site_info(site)
        return SiteCreated(site=info, enrollment_token=token, expires_at=expires_at)

    async def list_sites(self, actor: Principal) -> list[SiteInfo]:
        """Every site."""
        actor.require_reader()
        moment = now()
        async with self._db.transaction() as repo:
            return [
                info.model_copy(
                    update={
                        "offline": info.status == "active"
                        and is_silent(info.last_seen_at, moment, self._offline_after_s)
                    }
                )
                for info in map(site_info, await repo.list_sites())
            ]

    async def revoke(self, name: str, actor: Principal) -> SiteInfo:
        """Revoke a site for good: its credential stops working at once."""
        actor.require_admin()
        moment = now()
        async with self._db.transaction() as repo:
            site = await repo.site_by_name(name)
            if site is None:
                raise NotFound(f"site {name} does not exist", code="unknown_site")
            if site.status != "revoked":
                site.status = "revoked"
                await repo.audit(
                    actor=actor.actor, action="site.revoked", target=f"site:{name}", now=moment
                )
            return site_info(site)

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Exchange an enrollment token and the site's public key for a site credential."""
        try:
            raw_key = base64.b64decode(request.signing_public_key, validate=True)
            public_key = crypto.ed25519_public_from_bytes(raw_key)
        except (binascii.Error, ValueError, FedsegError):
            raise InvalidInput("signing_public_key must be a base64 raw Ed25519 key") from None
        credential = new_secret(SITE_PREFIX)
        moment = now()
        async with self._db.transaction() as repo:
            token = await repo.enrollment_token(hash_secret(request.token))
            if token is None or token.used_at is not None:
                raise AuthError("enrollment token is unknown or already used", code="bad_token")
            if token.expires_at <= moment:
                raise AuthError("enrollment token has expired", code="bad_token")
            site = await repo.site_by_id(token.site_id)
            if site is None or site.status != "pending":
                raise AuthError("this site cannot enroll (revoked or enrolled)", code="bad_token")
            token.used_at = moment
            site.status = "active"
            site.signing_public_key = base64.b64encode(raw_key).decode()
            site.fingerprint = crypto.fingerprint(public_key)
            site.credential_hash = hash_secret(credential)
            site.enrolled_at = moment
            site.last_seen_at = moment
            await repo.audit(
                actor=f"site:{site.name}",
                action="site.enrolled",
                target=f"site:{site.name}",
                now=moment,
                fingerprint=site.fingerprint,
            )
            name = site.name
        return EnrollResponse(
            site=name,
            credential=credential,
            server_signing_key=base64.b64encode(crypto.public_bytes(self._server_key)).decode(),
            server_key_id=crypto.key_id(self._server_key),
            server_fingerprint=crypto.fingerprint(self._server_key),
        )


def is_silent(last_seen_at: datetime | None, moment: datetime, after_s: float) -> bool:
    """Whether a site has not been heard from (polled) for more than ``after_s`` seconds."""
    if last_seen_at is None:
        return True
    if last_seen_at.tzinfo is None:  # SQLite hands back naive UTC
        last_seen_at = last_seen_at.replace(tzinfo=UTC)
    return (moment - last_seen_at).total_seconds() > after_s
