"""Admin and viewer tokens: minted with an expiry, listed, revoked; every change audited.

The secret is shown once (in `TokenCreated`) and stored as its sha256. A revoked
or expired token is refused by `AuthService.authenticate` with its own code. The
last usable admin token cannot be revoked, so an admin cannot lock everyone out
by mistake (`fedseg server create-token` on the server host is the way back).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import ValidationError

from server.db.engine import Database
from server.db.repositories import Repository, token_info
from server.services.auth import ADMIN_PREFIX, Principal, hash_secret, new_secret, now
from shared.errors import Conflict, InvalidInput, NotFound
from shared.schemas import TokenCreate, TokenCreated, TokenInfo


async def mint_token(
    repo: Repository, request: TokenCreate, *, actor: str, moment: datetime
) -> TokenCreated:
    """Store a new token's hash and audit it, inside the caller's transaction."""
    secret = new_secret(ADMIN_PREFIX)
    row = await repo.add_admin_token(
        token_hash=hash_secret(secret),
        role=request.role,
        label=request.label,
        now=moment,
        expires_at=moment + timedelta(days=request.expires_in_days),
    )
    await repo.audit(
        actor=actor,
        action="token.created",
        target=f"token:{row.id}",
        now=moment,
        role=request.role,
        label=request.label,
        expires_at=row.expires_at.isoformat() if row.expires_at else None,
    )
    return TokenCreated(token=token_info(row, moment), secret=secret)


def token_request(*, role: str, label: str, expires_in_days: int) -> TokenCreate:
    """Validate a token request from the command line; `InvalidInput` names the field."""
    try:
        return TokenCreate.model_validate(
            {"role": role, "label": label, "expires_in_days": expires_in_days}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"{where}: {error['msg']}") from None


class TokenService:
    """Token administration; admins only."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, request: TokenCreate, actor: Principal) -> TokenCreated:
        """Mint a token; its secret is in the answer and nowhere else."""
        actor.require_admin()
        async with self._db.transaction() as repo:
            return await mint_token(repo, request, actor=actor.actor, moment=now())

    async def list_tokens(self, actor: Principal) -> list[TokenInfo]:
        """Every admin and viewer token with its status; never a secret."""
        actor.require_admin()
        moment = now()
        async with self._db.transaction() as repo:
            return [token_info(row, moment) for row in await repo.admin_tokens()]

    async def revoke(self, token_id: int, actor: Principal) -> TokenInfo:
        """Revoke a token for good; it is refused from the next request on."""
        actor.require_admin()
        moment = now()
        async with self._db.transaction() as repo:
            row = await repo.admin_token_by_id(token_id)
            if row is None:
                raise NotFound(f"there is no token {token_id}", code="not_found")
            if row.revoked_at is None:
                usable = row.role == "admin" and (row.expires_at is None or row.expires_at > moment)
                if usable and await repo.count_usable_admin_tokens(moment) <= 1:
                    raise Conflict(
                        "this is the last usable admin token; create another admin token first"
                    )
                row.revoked_at = moment
                await repo.audit(
                    actor=actor.actor,
                    action="token.revoked",
                    target=f"token:{row.id}",
                    now=moment,
                    role=row.role,
                    label=row.label,
                )
            return token_info(row, moment)
