"""Bearer tokens and who may do what: admin, viewer (read only) and site (only itself).

Every secret is 256 bits from `secrets`, shown once, and stored as its sha256. A
prefix names the kind of token, so a lookup goes to the right table and a token
pasted into the wrong place fails clearly.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from server.db.engine import Database
from shared.errors import AuthError, Forbidden

Role = Literal["admin", "viewer", "site"]
ADMIN_PREFIX: Final = "fsa_"
SITE_PREFIX: Final = "fss_"
ENROLL_PREFIX: Final = "fse_"
LAST_SEEN_EVERY: Final = timedelta(seconds=30)


def new_secret(prefix: str) -> str:
    """A fresh 256-bit token with a kind prefix."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(token: str) -> str:
    """What the database stores instead of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def now() -> datetime:
    """The current time, UTC-aware (one place, so every row agrees)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, a name for the audit log, and the site's id for sites."""

    role: Role
    name: str
    site_id: int | None = None

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        return f"{self.role}:{self.name}"

    def require_admin(self) -> None:
        """Only admins may change things."""
        if self.role != "admin":
            raise Forbidden("this needs an admin token")

    def require_reader(self) -> None:
        """Admins and viewers may read."""
        if self.role not in ("admin", "viewer"):
            raise Forbidden("this needs an admin or viewer token")

    def require_site(self) -> int:
        """Only enrolled sites; returns the site's id."""
        if self.role != "site" or self.site_id is None:
            raise Forbidden("this needs a site credential")
        return self.site_id


class AuthService:
    """Turns an ``Authorization`` header into a `Principal` (tokens are minted in `tokens`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def authenticate(self, authorization: str | None) -> Principal:
        """Check the bearer token; raise `AuthError` with a precise code if it fails."""
        if not authorization:
            raise AuthError("an Authorization: Bearer token is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("use Authorization: Bearer <token>", code="bad_token")
        token_hash = hash_secret(token)
        if token.startswith(SITE_PREFIX):
            return await self._site(token_hash)
        if token.startswith(ADMIN_PREFIX):
            return await self._admin(token_hash)
        raise AuthError("not a fedseg token", code="bad_token")

    async def _site(self, token_hash: str) -> Principal:
        # a read: authentication never queues behind commits (see `Database.read`)
        async with self._db.read() as repo:
            site = await repo.site_by_credential(token_hash)
            if site is None:
                raise AuthError("unknown site credential", code="bad_token")
            if site.status == "revoked":
                raise AuthError(f"site {site.name} has been revoked", code="token_revoked")
            principal = Principal(role="site", name=site.name, site_id=site.id)
            seen = site.last_seen_at
        moment = now()
        if seen is None or moment - seen > LAST_SEEN_EVERY:  # a write, once in a while
            async with self._db.transaction() as repo:
                row = await repo.site_by_id(site.id)
                if row is not None:
                    row.last_seen_at = moment
        return principal

    async def _admin(self, token_hash: str) -> Principal:
        async with self._db.read() as repo:
            admin = await repo.admin_token(token_hash)
            if admin is None:
                raise AuthError("unknown admin token", code="bad_token")
            if admin.revoked_at is not None:
                raise AuthError("this admin token has been revoked", code="token_revoked")
            if admin.expires_at is not None and admin.expires_at <= now():
                raise AuthError(
                    f"this admin token expired at {admin.expires_at.isoformat()}",
                    code="token_expired",
                )
            role: Role = "admin" if admin.role == "admin" else "viewer"
            return Principal(role=role, name=admin.label)
