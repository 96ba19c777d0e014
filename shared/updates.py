"""Sealed weight updates: the envelope a site uploads and the server opens.

Layout::

    MAGIC(8) | header_length(u32 big-endian) | header JSON | sealed payload | signature(64)

The header is canonical JSON of `UpdateHeader`, bound to the payload as AEAD
associated data, so it cannot be swapped. The site signs the sha256 of everything
before the signature (its *digest*) with its Ed25519 key. The server checks the
signature before it decrypts anything, and decrypts before it parses any tensor.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import ValidationError

from shared import crypto
from shared.errors import IntegrityError, TensorError
from shared.schemas import UpdateHeader, canonical_json

if TYPE_CHECKING:
    import torch

    from shared.tensors import Tensors

MAGIC: Final = b"FSEGUPD1"
UPDATE_CONTEXT: Final = b"fedseg/update/v1"
MAX_HEADER_SIZE: Final = 64 * 1024
_PREFIX = struct.Struct(">8sI")
PREFIX_SIZE: Final = _PREFIX.size


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The clear-text front of an envelope and where its sealed payload lies."""

    header: UpdateHeader
    header_bytes: bytes
    payload_offset: int
    payload_length: int


@dataclass(frozen=True, slots=True)
class UpdateEnvelope:
    """A parsed, not yet verified, update envelope."""

    header: UpdateHeader
    header_bytes: bytes
    sealed: bytes
    signature: bytes
    digest: bytes


def seal_update(
    header: UpdateHeader,
    change: Mapping[str, torch.Tensor],
    *,
    round_key: X25519PublicKey,
    site_key: Ed25519PrivateKey,
) -> bytes:
    """Serialise, seal and sign a torch delta; returns the envelope bytes to upload.

    Imports torch when called; `seal_update_payload` takes safetensors bytes instead.
    """
    from shared.tensors import to_safetensors

    payload = to_safetensors(change)
    return seal_update_payload(header, payload, round_key=round_key, site_key=site_key)


def seal_update_payload(
    header: UpdateHeader,
    payload: bytes,
    *,
    round_key: X25519PublicKey,
    site_key: Ed25519PrivateKey,
) -> bytes:
    """Like `seal_update` for a payload already serialised as safetensors bytes."""
    header_bytes = canonical_json(header)
    sealed = crypto.seal(round_key, payload, header_bytes, context=UPDATE_CONTEXT)
    body = _PREFIX.pack(MAGIC, len(header_bytes)) + header_bytes + sealed
    return body + crypto.sign(site_key, crypto.sha256(body))


def check_prefix(prefix: bytes, size: int) -> int:
    """Check an envelope's prefix against its ``size`` in bytes; returns the header's length.

    ``prefix`` starts with the envelope's first `PREFIX_SIZE` bytes. Checks that
    ``size`` can hold a prefix and a signature before unpacking, then the magic, the
    header bound, and that the header and a signature fit in ``size``.
    """
    if size < _PREFIX.size + crypto.SIGNATURE_SIZE:
        raise IntegrityError("update envelope is truncated", code="truncated")
    magic, length = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise IntegrityError("not a fedseg update envelope", code="malformed_envelope")
    if length > MAX_HEADER_SIZE:
        raise IntegrityError("update header is too large", code="malformed_envelope")
    if size < _PREFIX.size + length + crypto.SIGNATURE_SIZE:
        raise IntegrityError("update envelope is truncated", code="truncated")
    return int(length)


def parse_header(header_bytes: bytes) -> UpdateHeader:
    """Parse an envelope's header; refuses one that is invalid or not canonical JSON."""
    try:
        header = UpdateHeader.model_validate_json(header_bytes)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "header"
        if error["loc"][:1] == ("num_samples",):  # a weight out of range, not a broken envelope
            raise TensorError(
                f"update header is invalid: {where}: {error['msg']}", code="bad_num_samples"
            ) from None
        raise IntegrityError(
            f"update header is invalid: {where}: {error['msg']}", code="malformed_envelope"
        ) from None
    if canonical_json(header) != header_bytes:
        raise IntegrityError("update header is not canonical JSON", code="malformed_envelope")
    return header


def read_envelope_header(handle: BinaryIO, size: int) -> EnvelopeHeader:
    """The one envelope reader: prefix and header of ``size`` bytes at ``handle``'s start.

    Reads at most `PREFIX_SIZE` + `MAX_HEADER_SIZE` bytes and verifies nothing yet;
    the server reads streamed bodies and stored blobs with it, `parse_envelope` bytes.
    """
    header_length = check_prefix(handle.read(PREFIX_SIZE), size)
    header_bytes = handle.read(header_length)
    header = parse_header(header_bytes)
    payload_offset = PREFIX_SIZE + header_length
    return EnvelopeHeader(
        header=header,
        header_bytes=header_bytes,
        payload_offset=payload_offset,
        payload_length=size - payload_offset - crypto.SIGNATURE_SIZE,
    )


def unseal_envelope(
    handle: BinaryIO, envelope: EnvelopeHeader, round_key: X25519PrivateKey
) -> bytearray:
    """Decrypt the payload at ``handle`` chunk by chunk into one buffer (safetensors bytes)."""
    handle.seek(envelope.payload_offset)
    return crypto.unseal_stream(
        round_key,
        handle.read,
        envelope.payload_length,
        envelope.header_bytes,
        context=UPDATE_CONTEXT,
    )


def parse_envelope(data: bytes) -> UpdateEnvelope:
    """Split an envelope into its parts and parse the header; verifies nothing yet."""
    front = read_envelope_header(io.BytesIO(data), len(data))
    body_end = len(data) - crypto.SIGNATURE_SIZE
    return UpdateEnvelope(
        header=front.header,
        header_bytes=front.header_bytes,
        sealed=data[front.payload_offset : body_end],
        signature=data[body_end:],
        digest=crypto.sha256(data[:body_end]),
    )


def verify_envelope(envelope: UpdateEnvelope, site_key: Ed25519PublicKey) -> None:
    """Raise `IntegrityError` unless the site's key signed this envelope."""
    crypto.verify(site_key, envelope.signature, envelope.digest)


def unseal_payload(envelope: UpdateEnvelope, round_key: X25519PrivateKey) -> bytes:
    """Decrypt the payload (safetensors bytes); fails if header or payload changed."""
    return crypto.unseal(round_key, envelope.sealed, envelope.header_bytes, context=UPDATE_CONTEXT)


def open_update(
    data: bytes, *, site_key: Ed25519PublicKey, round_key: X25519PrivateKey
) -> tuple[UpdateHeader, Tensors]:
    """Parse, verify the signature, decrypt, then parse tensors, in that order (torch)."""
    from shared.tensors import from_safetensors

    envelope = parse_envelope(data)
    verify_envelope(envelope, site_key)
    return envelope.header, from_safetensors(unseal_payload(envelope, round_key))
