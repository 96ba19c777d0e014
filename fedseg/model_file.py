"""Opening a model a person points at: verify the signed fedseg bundle, then read it.

``--model`` may name the signed tar (``final-model.tar`` from ``simulate``, or what
``admin models download`` writes), an unpacked bundle folder, or a MONAI bundle that
``admin models export`` wrote (it carries the signed tar as ``models/fedseg-bundle.tar``).
Nothing is parsed before the signature and the weights' sha256 check out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import crypto
from shared.bundle import Bundle, open_bundle
from shared.errors import BundleError, InvalidInput

SIGNED_IN_EXPORT: Final = Path("models/fedseg-bundle.tar")


def signed_bundle_path(path: Path) -> Path:
    """The signed fedseg bundle that ``path`` is or holds."""
    if not path.exists():
        raise InvalidInput(f"--model {path} does not exist")
    if path.is_dir() and (path / SIGNED_IN_EXPORT).is_file():
        return path / SIGNED_IN_EXPORT
    return path


def open_model(path: Path, server_key: Ed25519PublicKey) -> tuple[Bundle, bytes | None]:
    """The verified bundle, and its tar bytes when it came as a tar (for re-export)."""
    source = signed_bundle_path(path)
    try:
        data = source.read_bytes() if source.is_file() else None
    except OSError as exc:
        raise InvalidInput(f"cannot read --model {source}: {exc.strerror}") from None
    try:
        opened = open_bundle(
            data if data is not None else source, {crypto.key_id(server_key): server_key}
        )
    except BundleError as exc:
        raise BundleError(f"--model {path}: {exc.message}", code=exc.code) from None
    return opened, data
