"""Streaming FedAvg: a running weighted sum of deltas, O(model) memory for any N.

``consensus = base + sum_i(w_i * delta_i) / sum_i(w_i)``, with ``w_i`` the site's
``num_samples``. Floating-point tensors accumulate in float32 (like the model);
integer tensors accumulate in float64 and are rounded (half to even) when applied,
as `shared.tensors.apply_delta` does. numpy only: each add multiplies into a
scratch buffer of one tensor's size and adds that in place, so no model-sized
temporary is ever made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.arrays import (
    BFLOAT16,
    FLOATING,
    Array,
    Arrays,
    bfloat16_to_float32,
    float32_to_bfloat16,
)
from shared.errors import TensorError
from shared.schemas import TensorSpec


def _as_float(array: Array) -> Array:
    """Values numpy can compute with: bfloat16 widened to float32 (a tensor-sized copy)."""
    return bfloat16_to_float32(array) if array.dtype == BFLOAT16 else array


class Accumulator:
    """The running weighted sum of one round's accepted deltas."""

    def __init__(self, spec: list[TensorSpec]) -> None:
        self._sums: Arrays = {
            item.name: np.zeros(
                item.shape, dtype=np.float32 if item.dtype in FLOATING else np.float64
            )
            for item in spec
        }
        largest: dict[Any, int] = {}
        for total in self._sums.values():
            largest[total.dtype] = max(largest.get(total.dtype, 0), total.size)
        self._scratch: dict[Any, npt.NDArray[Any]] = {
            dtype: np.empty(size, dtype=dtype) for dtype, size in largest.items()
        }
        self.total_weight = 0.0
        self.count = 0

    def add(self, change: Mapping[str, Array], weight: float) -> None:
        """Add ``weight * change``; ``change`` must have exactly the spec's names and shapes."""
        if set(change) != set(self._sums):
            raise TensorError("update tensors differ from the round's model")
        if weight < 0:
            raise TensorError("weights cannot be negative", code="bad_num_samples")
        for name, total in self._sums.items():
            if change[name].shape != total.shape:
                raise TensorError(
                    f"tensor {name!r} has shape {list(change[name].shape)}, "
                    f"expected {list(total.shape)}"
                )
        for name, total in self._sums.items():
            scratch = self._scratch[total.dtype][: total.size].reshape(total.shape)
            # cast to the sum's dtype first, then scale (as torch's add_(x.to(dtype), alpha=w))
            np.multiply(_as_float(change[name]), weight, out=scratch, dtype=total.dtype)
            np.add(total, scratch, out=total)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Arrays:
        """The weighted mean delta (zeros when nothing has weight)."""
        scale = 1.0 / self.total_weight if self.total_weight > 0 else 0.0
        return {name: total * scale for name, total in self._sums.items()}

    def consensus(self, base: Mapping[str, Array]) -> Arrays:
        """``base + mean`` in the base arrays' dtypes; ``base`` and the sum are only read.

        Each tensor of the result is one new buffer (the model's size in all); the sum
        is kept, so a close that fails after this can compute the consensus again.
        """
        if set(base) != set(self._sums):
            raise TensorError("base model and round disagree on tensor names")
        scale = 1.0 / self.total_weight if self.total_weight > 0 else 0.0
        out: Arrays = {}
        for name, total in self._sums.items():
            array = base[name]
            mean = np.multiply(total, scale)
            if array.dtype == BFLOAT16:
                np.add(mean, bfloat16_to_float32(array), out=mean)
                out[name] = float32_to_bfloat16(mean)
            elif array.dtype.kind == "f":
                np.add(mean, array, out=mean, dtype=np.float32)
                out[name] = mean if array.dtype == mean.dtype else mean.astype(array.dtype)
            else:
                np.rint(mean, out=mean)
                out[name] = array + mean.astype(array.dtype)
        return out
