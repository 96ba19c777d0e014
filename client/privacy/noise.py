"""Privacy noise from a cryptographic stream: ChaCha20 keyed from the OS, never numpy's RNGs.

DP noise is secret: whoever predicts it can subtract it. `NoiseSource` expands a
256-bit key with ChaCha20 (the `cryptography` package) into uniform doubles and turns
them into Gaussian (Box-Muller) or Laplace (inverse CDF) samples in float64. The key
comes from ``os.urandom``; tests and benchmarks pass a ``seed`` to get a repeatable
stream from the same code path.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_TWO_POW_53 = float(2**53)


class NoiseSource:
    """A keyed ChaCha20 stream of uniform, Gaussian, Laplace and Bernoulli samples."""

    def __init__(self, *, seed: int | None = None) -> None:
        key = (
            os.urandom(32)
            if seed is None
            else hashlib.sha256(f"fedseg/noise/{seed}".encode()).digest()
        )
        nonce = bytes(16) if seed is not None else secrets.token_bytes(16)
        self._stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def uniform(self, count: int) -> torch.Tensor:
        """``count`` doubles uniform in (0, 1), never exactly 0 or 1."""
        raw = np.frombuffer(self._stream.update(bytes(8 * count)), dtype=np.uint64)
        values = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_POW_53
        return torch.from_numpy(values.copy())

    def gaussian(self, shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
        """N(0, std²) samples (float64) of ``shape`` by Box-Muller."""
        count = math.prod(shape)
        half = (count + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        radius = torch.sqrt(-2.0 * torch.log(u1))
        angle = 2.0 * math.pi * u2
        normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]
        return (normal * std).reshape(tuple(shape))

    def laplace(self, shape: tuple[int, ...] | torch.Size, scale: float) -> torch.Tensor:
        """Laplace(0, scale) samples (float64) of ``shape`` by the inverse CDF."""
        centred = self.uniform(math.prod(shape)) - 0.5
        values = -scale * torch.sign(centred) * torch.log1p(-2.0 * centred.abs())
        return values.reshape(tuple(shape))

    def bernoulli(self, count: int, probability: float) -> torch.Tensor:
        """``count`` independent coin flips that come up True with ``probability``."""
        return self.uniform(count) < probability

    def permutation(self, count: int) -> torch.Tensor:
        """A uniformly random order of ``range(count)`` (argsort of uniform keys)."""
        return torch.argsort(self.uniform(count))
