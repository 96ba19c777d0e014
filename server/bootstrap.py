"""One-off tasks for the command line: initialise a data directory, mint tokens, rotate keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.db.engine import Database, make_engine, migrate
from server.services.auth import now
from server.services.rotations import check_rotations, load_rotations, save_rotations
from server.services.tokens import mint_token, token_request
from server.settings import Settings
from shared import crypto
from shared.errors import ConfigError
from shared.rotation import sign_rotation
from shared.schemas import DEFAULT_TOKEN_DAYS, SignedKeyRotation, TokenCreate


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


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What `rotate_key` did: the retired key and its successor."""

    old_key_id: str
    new_key_id: str
    new_fingerprint: str
    rotations: int


def rotate_key(settings: Settings) -> RotationResult:
    """Replace the signing key with a new one and record the old key's signed statement.

    Order matters for a crash: the new key is written beside the old one, then the
    statement, then the new key replaces the old. A leftover new key that the last
    statement already names is installed by the next call instead of a new rotation.
    """
    settings.check()
    path, pending = settings.signing_key_path, settings.signing_key_path.with_suffix(".pem.new")
    rotations = load_rotations(settings.rotations_path)
    if pending.is_file() and rotations:
        leftover = crypto.load_signing_key(pending)
        if crypto.key_id(leftover.public_key()) == rotations[-1].rotation.new_key_id:
            pending.replace(path)  # finish the rotation a crash interrupted
            return _rotation_result(leftover, rotations)
    old = crypto.load_signing_key(path)
    check_rotations(rotations, old.public_key())
    new = crypto.generate_signing_key()
    moment = now()
    rotations.append(sign_rotation(old, new.public_key(), at=moment))
    crypto.save_signing_key(new, pending)
    save_rotations(settings.rotations_path, rotations)
    pending.replace(path)
    migrate(settings.database_url)
    asyncio.run(_audit_rotation(settings, rotations[-1]))
    return _rotation_result(new, rotations)


def _rotation_result(key: Ed25519PrivateKey, rotations: list[SignedKeyRotation]) -> RotationResult:
    return RotationResult(
        old_key_id=rotations[-1].rotation.old_key_id,
        new_key_id=crypto.key_id(key.public_key()),
        new_fingerprint=crypto.fingerprint(key.public_key()),
        rotations=len(rotations),
    )


async def _audit_rotation(settings: Settings, signed: SignedKeyRotation) -> None:
    db = Database(make_engine(settings.database_url))
    try:
        async with db.transaction() as repo:
            await repo.audit(
                actor="cli",
                action="server.key_rotated",
                target=f"key:{signed.rotation.new_key_id}",
                now=signed.rotation.rotated_at,
                old_key_id=signed.rotation.old_key_id,
            )
    finally:
        await db.close()
