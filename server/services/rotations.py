"""The server's key-rotation statements: a JSON list in the data directory, served as is.

`fedseg server rotate-key` appends one statement per rotation (signed by the key it
retires); the server refuses to start unless the statements chain, step by verified
step, to the key it signs with, so it never serves a history its key cannot back.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import TypeAdapter, ValidationError

from shared import crypto
from shared.errors import ConfigError, FedsegError
from shared.files import write_atomic
from shared.rotation import old_key_of, verify_rotation
from shared.schemas import SignedKeyRotation

_LIST = TypeAdapter(list[SignedKeyRotation])


def load_rotations(path: Path) -> list[SignedKeyRotation]:
    """The statements in ``path``, oldest first (none when the file does not exist)."""
    if not path.is_file():
        return []
    try:
        return _LIST.validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(
            f"{path} is not a list of key rotations: {exc.errors()[0]['msg']}"
        ) from None


def save_rotations(path: Path, rotations: list[SignedKeyRotation]) -> None:
    """Write the statements atomically (they are public: no secret in them)."""
    data = [signed.model_dump(mode="json") for signed in rotations]
    write_atomic(path, json.dumps(data, indent=2).encode())


def check_rotations(rotations: list[SignedKeyRotation], current: Ed25519PublicKey) -> None:
    """Raise `ConfigError` unless the statements chain, verified, to ``current``."""
    if not rotations:
        return
    previous: Ed25519PublicKey | None = None
    for index, signed in enumerate(rotations, start=1):
        try:
            old = old_key_of(signed)
            if previous is not None and crypto.key_id(old) != crypto.key_id(previous):
                raise ConfigError(f"key rotation {index} does not continue from the one before")
            previous = verify_rotation(signed, old)
        except ConfigError:
            raise
        except FedsegError as exc:
            raise ConfigError(f"key rotation {index} does not verify: {exc.message}") from None
    if previous is None or crypto.key_id(previous) != crypto.key_id(current):
        raise ConfigError(
            "the last key rotation does not name the server's signing key; "
            "restore the key it names, or the rotations file"
        )


class KeyRotations:
    """The statements the server serves at ``GET /api/v1/server/key-rotations``."""

    def __init__(self, rotations: list[SignedKeyRotation]) -> None:
        self._rotations = tuple(rotations)

    def list(self) -> list[SignedKeyRotation]:
        """Every statement, oldest first."""
        return list(self._rotations)
