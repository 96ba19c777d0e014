"""One-off set-up tasks for the command line: initialise a data directory, mint tokens."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.db.engine import Database, make_engine, migrate
from server.services.auth import now
from server.services.tokens import mint_token, token_request
from server.settings import Settings
from shared import crypto
from shared.errors import ConfigError
from shared.schemas import DEFAULT_TOKEN_DAYS, TokenCreate


@dataclass(frozen=True, slots=True)
class InitResult:
    """What `init_data_dir` made; the admin token is shown only here."""

    admin_token: str
    server_fingerprint: str
    server_key_id: str
    database_url: str
    data_dir: str


def init_data_dir(settings: Settings) -> InitResult:
    """Create the data directory, the signing key, the schema and the first admin token."""
    if settings.signing_key_path.exists():
        raise ConfigError(
            f"{settings.data_dir} is already initialised ({settings.signing_key_path} exists)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.keys_dir.mkdir(mode=0o700, exist_ok=True)
    settings.blob_dir.mkdir(exist_ok=True)
    key = crypto.generate_signing_key()
    crypto.save_signing_key(key, settings.signing_key_path)
    migrate(settings.database_url)
    request = token_request(role="admin", label="initial-admin", expires_in_days=DEFAULT_TOKEN_DAYS)
    token = asyncio.run(_create_token(settings, request))
    return InitResult(
        admin_token=token,
        server_fingerprint=crypto.fingerprint(key.public_key()),
        server_key_id=crypto.key_id(key.public_key()),
        database_url=settings.database_url,
        data_dir=str(settings.data_dir.resolve()),
    )


def create_token(
    settings: Settings, *, role: str, label: str, expires_in_days: int = DEFAULT_TOKEN_DAYS
) -> str:
    """Mint another admin or viewer token for an initialised data directory."""
    settings.check()
    migrate(settings.database_url)
    request = token_request(role=role, label=label, expires_in_days=expires_in_days)
    return asyncio.run(_create_token(settings, request))


async def _create_token(settings: Settings, request: TokenCreate) -> str:
    db = Database(make_engine(settings.database_url))
    try:
        async with db.transaction() as repo:
            created = await mint_token(repo, request, actor="cli", moment=now())
        return created.secret
    finally:
        await db.close()
