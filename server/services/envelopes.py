"""Receiving and opening sealed updates without holding more than one plaintext copy.

`peek_header` parses the clear-text header from the front of the stream, so
intake checks it before the body is stored. The body is then streamed to a temp
file and hashed once on the way, in a worker thread: the sha256 of all but the
trailing 64-byte signature (the digest the site signed) and, from the same running
state, the sha256 of every byte (the update's identity and blob key). Opening then
reads the envelope with `shared.updates.read_envelope_header` (the one reader),
checks the signature against that digest, decrypts chunk by chunk into one buffer,
and `shared.arrays.from_safetensors` views arrays over it with no further copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import crypto
from shared.errors import IntegrityError, PayloadTooLarge
from shared.schemas import UpdateHeader
from shared.updates import PREFIX_SIZE, check_prefix, parse_header

_BATCH_BYTES: Final = 1 << 20


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
    """Stream ``chunks`` to ``path``; stop at ``limit`` bytes (413) or a short body.

    The event loop only collects chunks: each batch of about `_BATCH_BYTES` is
    written and hashed in a worker thread while the next one arrives (one batch in
    flight per body, so a slow disk slows the sender). The finished file is
    fsynced there too: it is only a temp file, but storing it after the checks
    then has next to nothing left to flush.
    """
    loop = asyncio.get_running_loop()
    size = 0
    with path.open("wb") as handle:
        sink = _Sink(handle)
        pending: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        batched = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"update is larger than {limit} bytes")
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _BATCH_BYTES:
                    if pending is not None:
                        await asyncio.shield(pending)
                    pending = loop.run_in_executor(None, sink.feed, batch)
                    batch, batched = [], 0
            if declared is not None and size != declared:
                raise IntegrityError(
                    f"body ended after {size} of {declared} bytes", code="truncated"
                )
            if pending is not None:
                await asyncio.shield(pending)
            pending = loop.run_in_executor(None, sink.finish, batch)
            await asyncio.shield(pending)
        finally:
            # the worker writes to ``handle``: it stays open until the worker is done
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
            if pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: a failure here is not the one to report
    whole = sink.signed.copy()
    whole.update(sink.tail)
    return ReceivedBody(
        path=path,
        size=size,
        sha256=whole.hexdigest(),
        digest=sink.signed.digest(),
        signature=sink.tail,
    )


class _Sink:
    """Writes a body and hashes it once, holding back the trailing signature.

    ``signed`` takes every byte but the last 64 (the digest the site signed);
    ``tail`` keeps those 64. SHA-256 is a running state, so the digest of the whole
    body is a copy of ``signed`` fed the tail: one pass over the bytes, not two.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.signed = hashlib.sha256()
        self.tail = b""

    def feed(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.handle.write(chunk)
            if len(chunk) >= crypto.SIGNATURE_SIZE:
                self.signed.update(self.tail)
                cut = len(chunk) - crypto.SIGNATURE_SIZE
                self.signed.update(memoryview(chunk)[:cut])
                self.tail = chunk[cut:]
            else:
                joined = self.tail + chunk
                cut = max(0, len(joined) - crypto.SIGNATURE_SIZE)
                self.signed.update(joined[:cut])
                self.tail = joined[cut:]

    def finish(self, batch: list[bytes]) -> None:
        self.feed(batch)
        self.handle.flush()
        os.fsync(self.handle.fileno())


async def peek_header(
    chunks: AsyncIterator[bytes], *, declared: int | None, limit: int
) -> tuple[UpdateHeader, AsyncIterator[bytes]]:
    """The envelope header at the front of a streamed body, and the whole body again.

    Reads only until the prefix and header are in (at most about 64 KiB more than
    one chunk); the returned iterator yields those bytes first, then the rest.
    """
    stream = aiter(chunks)
    front = bytearray()
    needed = PREFIX_SIZE
    size_hint = declared if declared is not None else limit
    while len(front) < needed:
        chunk = await anext(stream, None)
        if chunk is None:
            raise IntegrityError("update envelope is truncated", code="truncated")
        front += chunk
        if needed == PREFIX_SIZE and len(front) >= PREFIX_SIZE:
            needed += check_prefix(bytes(front[:PREFIX_SIZE]), max(size_hint, len(front)))
    header = parse_header(bytes(front[PREFIX_SIZE:needed]))

    async def body() -> AsyncIterator[bytes]:
        yield bytes(front)
        async for chunk in stream:
            yield chunk

    return header, body()


def verify_signature(body: ReceivedBody, site_key: Ed25519PublicKey) -> None:
    """The site's Ed25519 signature over the digest of everything before it."""
    crypto.verify(site_key, body.signature, body.digest)
