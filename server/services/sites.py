"""Sites: registration by an admin, one-time enrollment by the hospital, revocation.

A site enrolls only with an unspent, unexpired token while it is ``pending``. Revoking
is for good unless an admin re-issues a token: that expires every unspent token of the
site, forgets its enrolled key and credential, and makes it ``pending`` again, so the
only way back in is the new token. Every refused enrollment is audited (with a short
prefix of the token's hash, never the token).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.db.engine import Database
from server.db.models import EnrollmentTokenRow, SiteRow
from server.db.repositories import site_info
from server.services.auth import ENROLL_PREFIX, SITE_PREFIX, Principal, hash_secret, new_secret, now
from shared import crypto
from shared.errors import AuthError, Conflict, FedsegError, InvalidInput, NotFound
from shared.schemas import (
    EnrollRequest,
    EnrollResponse,
    ServerKey,
    SiteCreate,
    SiteCreated,
    SiteInfo,
    SiteReissue,
)


class SiteService:
    """Everything about sites; the server's public key is what enrollment hands out."""

    def __init__(
        self, db: Database, server_key: Ed25519PublicKey, *, offline_after_s: float = 120.0
    ) -> None:
        self._db = db
        self._server_key = server_key
        self._offline_after_s = offline_after_s

    def server_key(self) -> ServerKey:
        """The server's public signing key in every form a verifier may want."""
        return ServerKey(
            public_key_pem=crypto.public_key_pem(self._server_key).decode(),
            public_key=base64.b64encode(crypto.public_bytes(self._server_key)).decode(),
            key_id=crypto.key_id(self._server_key),
            fingerprint=crypto.fingerprint(self._server_key),
        )

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
            for token in await repo.unused_enrollment_tokens(site.id):
                token.expires_at = min(token.expires_at, moment)
            if site.status != "revoked":
                site.status = "revoked"
                await repo.audit(
                    actor=actor.actor, action="site.revoked", target=f"site:{name}", now=moment
                )
            return site_info(site)

    async def reissue_token(self, name: str, request: SiteReissue, actor: Principal) -> SiteCreated:
        """A fresh enrollment token; the old token, key and credential stop working."""
        actor.require_admin()
        token = new_secret(ENROLL_PREFIX)
        moment = now()
        expires_at = moment + timedelta(seconds=request.token_ttl_s)
        async with self._db.transaction() as repo:
            site = await repo.site_by_name(name)
            if site is None:
                raise NotFound(f"site {name} does not exist", code="unknown_site")
            for old in await repo.unused_enrollment_tokens(site.id):
                old.expires_at = min(old.expires_at, moment)
            previous = site.status
            site.status = "pending"
            site.signing_public_key = None
            site.fingerprint = None
            site.credential_hash = None
            site.enrolled_at = None
            await repo.add_enrollment_token(
                site_id=site.id, token_hash=hash_secret(token), now=moment, expires_at=expires_at
            )
            await repo.audit(
                actor=actor.actor,
                action="site.token_reissued",
                target=f"site:{name}",
                now=moment,
                previous_status=previous,
                expires_at=expires_at.isoformat(),
            )
            info = site_info(site)
        return SiteCreated(site=info, enrollment_token=token, expires_at=expires_at)

    @staticmethod
    def _activate(
        site: SiteRow,
        token: EnrollmentTokenRow,
        raw_key: bytes,
        public_key: Ed25519PublicKey,
        credential: str,
        moment: datetime,
    ) -> str:
        """Spend the token and make the site active with its key and credential."""
        token.used_at = moment
        site.status = "active"
        site.signing_public_key = base64.b64encode(raw_key).decode()
        site.fingerprint = crypto.fingerprint(public_key)
        site.credential_hash = hash_secret(credential)
        site.enrolled_at = moment
        site.last_seen_at = moment
        return site.name

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Exchange an enrollment token and the site's public key for a site credential.

        A failure with a token that names a site is audited (``site.enroll_failed``);
        unknown tokens are counted with the other refused requests instead, so a
        flood of guesses cannot flood the log.
        """
        try:
            return await self._enroll(request)
        except FedsegError as exc:
            await self._audit_failed_enrollment(request.token, exc)
            raise

    async def _audit_failed_enrollment(self, token: str, exc: FedsegError) -> None:
        async with self._db.transaction() as repo:
            row = await repo.enrollment_token(hash_secret(token))
            site = None if row is None else await repo.site_by_id(row.site_id)
            if site is not None:
                await repo.audit(
                    actor=f"site:{site.name}",
                    action="site.enroll_failed",
                    target=f"site:{site.name}",
                    now=now(),
                    code=exc.code,
                    reason=exc.message[:200],
                )

    async def _enroll(self, request: EnrollRequest) -> EnrollResponse:
        try:
            raw_key = base64.b64decode(request.signing_public_key, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("signing_public_key must be a base64 raw Ed25519 key") from None
        problem = crypto.ed25519_key_problem(raw_key)
        if problem is not None:
            raise InvalidInput(f"signing_public_key is not a usable Ed25519 key: {problem}")
        public_key = crypto.ed25519_public_from_bytes(raw_key)
        credential = new_secret(SITE_PREFIX)
        moment = now()
        token_hash = hash_secret(request.token)
        refusal: str | None = None
        async with self._db.transaction() as repo:
            token = await repo.enrollment_token(token_hash)
            site = None if token is None else await repo.site_by_id(token.site_id)
            if token is None or token.used_at is not None:
                refusal = "enrollment token is unknown or already used"
            elif token.expires_at <= moment:
                refusal = (
                    "enrollment token has expired or was replaced; "
                    "ask the admin for a new one (fedseg admin sites reissue-token)"
                )
            elif site is None or site.status != "pending":
                refusal = (
                    "this site cannot enroll (revoked or enrolled); "
                    "the admin can re-issue a token (fedseg admin sites reissue-token)"
                )
            if refusal is not None or site is None or token is None:
                await repo.audit(
                    actor="anonymous",
                    action="site.enroll_refused",
                    target=f"site:{site.name}" if site is not None else "site:?",
                    now=moment,
                    reason=refusal or "unknown site",
                    token_sha256_prefix=token_hash[:12],
                )
            else:
                name = self._activate(site, token, raw_key, public_key, credential, moment)
                await repo.audit(
                    actor=f"site:{name}",
                    action="site.enrolled",
                    target=f"site:{name}",
                    now=moment,
                    fingerprint=site.fingerprint,
                )
        if refusal is not None or site is None or token is None:
            # raised after the block, so the audit event of the refusal is committed
            raise AuthError(refusal or "enrollment token is unknown", code="bad_token")
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
