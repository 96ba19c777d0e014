"""Receiving and opening sealed updates without holding more than one plaintext copy.

The body is streamed to a temp file while two hashes run: the sha256 of every
byte (the update's identity and blob key) and the sha256 of all but the trailing
64-byte signature (the digest the site signed). Opening then reads the header,
checks the signature against that digest, decrypts chunk by chunk into one buffer,
and `shared.arrays.from_safetensors` views arrays over it with no further copy.
Checks run in the order of `shared.updates.open_update`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from shared import crypto
from shared.errors import IntegrityError, PayloadTooLarge
from shared.schemas import UpdateHeader, canonical_json
from shared.updates import MAGIC, MAX_HEADER_SIZE, UPDATE_CONTEXT

_PREFIX = struct.Struct(">8sI")


@dataclass(frozen=True, slots=True)
class ReceivedBody:
    """A request body streamed to disk, with the hashes taken on the way."""

    path: Path
    size: int
    sha256: str
    digest: bytes
    signature: bytes


async def receive_body(
    chunks: AsyncIterator[bytes], path: Path, *, limit: int, declared: int | None
) -> ReceivedBody:
    """Stream ``chunks`` to ``path``; stop at ``limit`` bytes (413) or a short body."""
    whole = hashlib.sha256()
    signed = hashlib.sha256()
    tail = b""
    size = 0
    with path.open("wb") as handle:
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"update is larger than {limit} bytes")
            handle.write(chunk)
            whole.update(chunk)
            tail += chunk
            if len(tail) > crypto.SIGNATURE_SIZE:
                cut = len(tail) - crypto.SIGNATURE_SIZE
                signed.update(tail[:cut])
                tail = tail[cut:]
    if declared is not None and size != declared:
        raise IntegrityError(f"body ended after {size} of {declared} bytes", code="truncated")
    return ReceivedBody(
        path=path, size=size, sha256=whole.hexdigest(), digest=signed.digest(), signature=tail
    )


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The clear-text part of an envelope and where its sealed payload lies."""

    header: UpdateHeader
    header_bytes: bytes
    payload_offset: int
    payload_length: int


def read_header(body: ReceivedBody) -> EnvelopeHeader:
    """Parse the envelope prefix and header; verifies nothing yet."""
    if body.size < _PREFIX.size + crypto.SIGNATURE_SIZE:
        raise IntegrityError("update envelope is truncated", code="truncated")
    with body.path.open("rb") as handle:
        magic, header_length = _PREFIX.unpack(handle.read(_PREFIX.size))
        if magic != MAGIC:
            raise IntegrityError("not a fedseg update envelope", code="malformed_envelope")
        if header_length > MAX_HEADER_SIZE:
            raise IntegrityError("update header is too large", code="malformed_envelope")
        payload_offset = _PREFIX.size + header_length
        if body.size < payload_offset + crypto.SIGNATURE_SIZE:
            raise IntegrityError("update envelope is truncated", code="truncated")
        header_bytes = handle.read(header_length)
    try:
        header = UpdateHeader.model_validate_json(header_bytes)
    except ValidationError as exc:
        raise IntegrityError(
            f"update header is invalid: {exc.errors()[0]['msg']}", code="malformed_envelope"
        ) from None
    if canonical_json(header) != header_bytes:
        raise IntegrityError("update header is not canonical JSON", code="malformed_envelope")
    return EnvelopeHeader(
        header=header,
        header_bytes=header_bytes,
        payload_offset=payload_offset,
        payload_length=body.size - payload_offset - crypto.SIGNATURE_SIZE,
    )


def verify_signature(body: ReceivedBody, site_key: Ed25519PublicKey) -> None:
    """The site's Ed25519 signature over the digest of everything before it."""
    crypto.verify(site_key, body.signature, body.digest)


def open_payload(path: Path, envelope: EnvelopeHeader, round_key: X25519PrivateKey) -> bytearray:
    """Decrypt the sealed payload into one buffer (safetensors bytes)."""
    with path.open("rb") as handle:
        handle.seek(envelope.payload_offset)
        return crypto.unseal_stream(
            round_key,
            handle.read,
            envelope.payload_length,
            envelope.header_bytes,
            context=UPDATE_CONTEXT,
        )
