"""Receiving and opening sealed updates without holding more than one plaintext copy.

The body is streamed to a temp file while two hashes run: the sha256 of every
byte (the update's identity and blob key) and the sha256 of all but the trailing
64-byte signature (the digest the site signed). Opening then reads the header,
checks the signature against that digest, decrypts chunk by chunk into one buffer
and views tensors over it with no further copy. Checks run in the order of
`shared.updates.open_update`; the tensor parser is as strict as safetensors'.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from shared import crypto
from shared.errors import IntegrityError, PayloadTooLarge
from shared.schemas import UpdateHeader, canonical_json
from shared.tensors import Tensors
from shared.updates import MAGIC, MAX_HEADER_SIZE, UPDATE_CONTEXT

_PREFIX = struct.Struct(">8sI")
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_TENSOR_HEADER = 100 * 1024 * 1024


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


def _bad(message: str) -> IntegrityError:
    return IntegrityError(f"not a valid safetensors payload: {message}", code="malformed_envelope")


def tensors_from_buffer(buffer: bytearray | memoryview) -> Tensors:
    """Tensors viewing a safetensors buffer without copying it (copies only misaligned ones).

    Refuses what safetensors refuses: a bad header, unknown dtypes, offsets that
    overlap, leave gaps, or do not match the shape. A read-only buffer gives
    read-only views: the caller must not write to them.
    """
    if len(buffer) < 8:
        raise _bad("too short")
    (header_length,) = struct.unpack_from("<Q", buffer)
    if header_length > min(_MAX_TENSOR_HEADER, len(buffer) - 8):
        raise _bad("header length out of range")
    try:
        header: Any = json.loads(bytes(buffer[8 : 8 + header_length]))
    except (UnicodeDecodeError, ValueError):
        raise _bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad("header is not an object")
    header.pop("__metadata__", None)
    start = 8 + header_length
    data_length = len(buffer) - start
    entries: list[tuple[int, int, str, torch.dtype, list[int]]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(f"entry {name!r} is malformed")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        shape, offsets = info["shape"], info["data_offsets"]
        if dtype is None:
            raise _bad(f"entry {name!r} has an unsupported dtype")
        if not (
            isinstance(shape, list)
            and all(isinstance(size, int) and size >= 0 for size in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(offset, int) for offset in offsets)
        ):
            raise _bad(f"entry {name!r} has a malformed shape or offsets")
        begin, end = offsets
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= data_length or end - begin != math.prod(shape) * itemsize:
            raise _bad(f"entry {name!r} has offsets that do not match its shape")
        entries.append((begin, end, name, dtype, shape))
    entries.sort()
    position = 0
    for begin, end, name, _dtype, _shape in entries:
        if begin != position:
            raise _bad(f"entry {name!r} overlaps another or leaves a gap")
        position = end
    if position != data_length:
        raise _bad("data section has trailing bytes")
    tensors: Tensors = {}
    for begin, end, name, dtype, shape in entries:
        count = math.prod(shape)
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        offset = start + begin
        if offset % torch.empty((), dtype=dtype).element_size():
            raw = torch.frombuffer(bytearray(buffer[offset : start + end]), dtype=torch.uint8)
            tensors[name] = raw.view(dtype).reshape(shape)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                view = torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            tensors[name] = view.reshape(shape)
    return tensors
