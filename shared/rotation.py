"""Server signing-key rotation: the old key signs a statement naming the new one.

A site pins one server key at enrollment. When a task or bundle names another key,
the site fetches the server's rotation statements and follows them from the key it
pinned: each step must be signed by the key before it. Only then does it pin the
new key; the keys it leaves behind are *retired*, and anything they sign after
their retirement is refused.

Caveat: whoever holds a retired private key can sign a rotation to a key of their
own, so rotating does not recover from a stolen key; revoke and re-enroll for that.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import KeyRotation, SignedKeyRotation, canonical_json

ROTATION_DOMAIN: Final = b"fedseg/key-rotation/v1"
MAX_STEPS: Final = 64


def sign_rotation(
    old_key: Ed25519PrivateKey, new_key: Ed25519PublicKey, *, at: datetime
) -> SignedKeyRotation:
    """The statement that ``new_key`` replaces ``old_key``, signed by ``old_key``."""
    rotation = KeyRotation(
        old_key_id=crypto.key_id(old_key.public_key()),
        old_signing_key=base64.b64encode(crypto.public_bytes(old_key.public_key())).decode(),
        new_key_id=crypto.key_id(new_key),
        new_signing_key=base64.b64encode(crypto.public_bytes(new_key)).decode(),
        rotated_at=at,
    )
    digest = crypto.domain_digest(ROTATION_DOMAIN, canonical_json(rotation))
    return SignedKeyRotation(
        rotation=rotation, signature=base64.b64encode(crypto.sign(old_key, digest)).decode()
    )


def verify_rotation(signed: SignedKeyRotation, old_key: Ed25519PublicKey) -> Ed25519PublicKey:
    """The new key, if ``old_key`` signed this rotation away from itself; else `IntegrityError`."""
    rotation = signed.rotation
    if rotation.old_key_id != crypto.key_id(old_key):
        raise IntegrityError("the rotation is not away from this key", code="bad_signature")
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        raw = base64.b64decode(rotation.new_signing_key, validate=True)
    except binascii.Error:
        raise IntegrityError("rotation is not base64", code="malformed_envelope") from None
    crypto.verify(
        old_key, signature, crypto.domain_digest(ROTATION_DOMAIN, canonical_json(rotation))
    )
    new_key = crypto.ed25519_public_from_bytes(raw)
    if crypto.key_id(new_key) != rotation.new_key_id:
        raise IntegrityError("the rotation's new key does not match its id", code="bad_signature")
    return new_key


def old_key_of(signed: SignedKeyRotation) -> Ed25519PublicKey:
    """The key a statement retires, as it names it (trust it only through a pinned key)."""
    try:
        raw = base64.b64decode(signed.rotation.old_signing_key, validate=True)
    except binascii.Error:
        raise IntegrityError("rotation is not base64", code="malformed_envelope") from None
    key = crypto.ed25519_public_from_bytes(raw)
    if crypto.key_id(key) != signed.rotation.old_key_id:
        raise IntegrityError("the rotation's old key does not match its id", code="bad_signature")
    return key


def follow_rotations(
    pinned: Ed25519PublicKey, rotations: Sequence[SignedKeyRotation]
) -> list[tuple[Ed25519PublicKey, SignedKeyRotation]]:
    """Every verified step from ``pinned`` to the newest key, in order (empty if none).

    Statements that do not continue the chain from ``pinned`` are ignored (older
    history, or forgeries); a statement that claims to but fails to verify raises.
    """
    by_old = {signed.rotation.old_key_id: signed for signed in rotations}
    steps: list[tuple[Ed25519PublicKey, SignedKeyRotation]] = []
    current, seen = pinned, {crypto.key_id(pinned)}
    while (signed := by_old.get(crypto.key_id(current))) is not None:
        current = verify_rotation(signed, current)
        if crypto.key_id(current) in seen or len(steps) >= MAX_STEPS:
            raise IntegrityError("the key rotations form a loop", code="bad_signature")
        seen.add(crypto.key_id(current))
        steps.append((current, signed))
    return steps
