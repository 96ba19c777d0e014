"""Masks and fixed point: AES-256-CTR streams from 256-bit seeds, added mod 2^32.

Every mask is expanded from a 256-bit seed with AES-256-CTR (`cryptography`, so
AES-NI), never with numpy's generators: a mask is a one-time pad over the update,
and a guessable generator would make it none. Masks are expanded and applied chunk
by chunk (1 MiB), all seeds in one pass, so no model-sized temporary is ever made.

Fixed point: a coordinate ``x`` is clipped to ``[-c, c]``, multiplied by the site's
integer weight ``w`` and scaled by ``L / c`` with ``L = 2^(bits-1) - 1``, then rounded
*stochastically* (``floor(z + u)``, ``u`` uniform from a fresh CSPRNG stream), which is
unbiased and off by less than one unit. The integer travels as two's complement mod
2^32; the sum of all sites stays within a signed 32-bit integer while each weight is at
most `config.weight_cap`. The weighted mean of the sum then errs by less than
``n * c / (L * W)`` per coordinate (``n`` sites, total weight ``W``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import crypto
from shared.secagg.config import levels
from shared.secagg.keys import RoundContext

Vector = npt.NDArray[np.uint32]
CHUNK: Final = 1 << 18  # elements per step: 1 MiB of uint32, fits in cache
SEED_SIZE: Final = 32
PAIR_CONTEXT: Final = b"fedseg/secagg/pair/v1"
_MASK_NONCE: Final = crypto.sha256(b"fedseg/secagg/mask/v1")[:16]
_ROUNDING_NONCE: Final = crypto.sha256(b"fedseg/secagg/rounding/v1")[:16]
_UNIT: Final = 2.0**-32


@dataclass(frozen=True, slots=True)
class Mask:
    """A mask to apply: expanded from ``seed``, added (``sign`` +1) or subtracted (-1)."""

    seed: bytes
    sign: int


def _stream(seed: bytes, nonce: bytes) -> CipherContext:
    if len(seed) != SEED_SIZE:
        raise ValueError("mask seeds are 32 bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()


class _Expander:
    """Scratch buffers for expanding cipher streams one chunk at a time."""

    def __init__(self) -> None:
        self._zeros = bytes(CHUNK * 4)
        self._buffer = bytearray(CHUNK * 4 + 15)  # update_into wants a block's slack

    def next(self, stream: CipherContext, size: int) -> Vector:
        """The next ``size`` uint32 of ``stream``; valid until the next call."""
        stream.update_into(memoryview(self._zeros)[: size * 4], self._buffer)
        return np.frombuffer(self._buffer, dtype=np.uint32, count=size)


def apply_masks(target: Vector, masks: Sequence[Mask]) -> None:
    """Add or subtract each mask's stream to ``target`` in place, mod 2^32."""
    if target.dtype != np.uint32 or target.ndim != 1:
        raise ValueError("masks apply to a flat uint32 vector")
    streams = [(_stream(mask.seed, _MASK_NONCE), mask.sign) for mask in masks]
    expander = _Expander()
    for start in range(0, target.size, CHUNK):
        part = target[start : start + CHUNK]
        for stream, sign in streams:
            values = expander.next(stream, part.size)
            if sign > 0:
                np.add(part, values, out=part)
            else:
                np.subtract(part, values, out=part)


def pair_seed(
    own: X25519PrivateKey,
    *,
    own_site: str,
    peer_site: str,
    peer_mask_key: bytes,
    context: RoundContext,
) -> bytes:
    """The mask seed two sites agree without talking: X25519, then HKDF over the round.

    Symmetric: both ends derive the same seed; the server derives it only once it has
    rebuilt one end's mask key from shares (for a dropped site).
    """
    own_key = crypto.public_bytes(own.public_key())
    first, second = sorted([(own_site, own_key), (peer_site, peer_mask_key)])
    secret = own.exchange(crypto.x25519_public_from_bytes(peer_mask_key))
    info = b"|".join([PAIR_CONTEXT, context.label(), first[0].encode(), second[0].encode()])
    return HKDF(
        algorithm=hashes.SHA256(), length=SEED_SIZE, salt=first[1] + second[1], info=info
    ).derive(secret)


def pair_sign(own_site: str, peer_site: str) -> int:
    """+1 when ``own_site`` sorts first, so the pair's two masks cancel in the sum."""
    if own_site == peer_site:
        raise ValueError("a site has no pairwise mask with itself")
    return 1 if own_site < peer_site else -1


def scale(*, clip_range: float, bits: int) -> float:
    """Units per 1.0 of weighted delta: ``L / c``."""
    return levels(bits) / clip_range


def quantise_into(
    out: Vector,
    values: npt.NDArray[Any],
    *,
    weight: int,
    clip_range: float,
    bits: int,
    stream: CipherContext,
    expander: _Expander | None = None,
) -> None:
    """Write ``values`` clipped, weighted and stochastically rounded into ``out`` (uint32).

    ``stream`` supplies the rounding's uniforms; make it with `rounding_stream`.
    """
    expander = expander or _Expander()
    flat = values.reshape(-1)
    factor = weight * scale(clip_range=clip_range, bits=bits)
    for start in range(0, flat.size, CHUNK):
        chunk = np.clip(flat[start : start + CHUNK].astype(np.float64), -clip_range, clip_range)
        chunk *= factor
        uniform = expander.next(stream, chunk.size).astype(np.float64)
        uniform *= _UNIT
        chunk += uniform
        np.floor(chunk, out=chunk)
        out[start : start + chunk.size] = chunk.astype(np.int64).astype(np.uint32)


def rounding_stream() -> CipherContext:
    """A fresh CSPRNG stream for stochastic rounding (a new random seed each call)."""
    return _stream(secrets.token_bytes(SEED_SIZE), _ROUNDING_NONCE)


def new_expander() -> _Expander:
    """Scratch buffers to share between `quantise_into` calls."""
    return _Expander()


def dequantise(
    total: Vector, *, total_weight: int, clip_range: float, bits: int
) -> npt.NDArray[np.float32]:
    """The weighted mean from (a slice of) the unmasked sum: signed integers over ``W * L / c``.

    Computed in float64 and returned as float32, so the rounding adds no error beyond
    float32's own.
    """
    if total_weight <= 0:
        raise ValueError("the total weight must be positive to take a mean")
    mean = total.view(np.int32).astype(np.float64)
    mean *= 1.0 / (total_weight * scale(clip_range=clip_range, bits=bits))
    return mean.astype(np.float32)
