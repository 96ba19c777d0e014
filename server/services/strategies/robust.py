"""Coordinate-wise order statistics over the sites' deltas: trimmed mean and median.

Yin et al. 2018 ("Byzantine-robust distributed learning"): per coordinate, sort the
N sites' values and average the middle ones (trimmed mean: ``floor(beta * N)`` cut
at each end) or take the middle one (median; the mean of the middle two for even N).
One vote per site: a site cannot buy influence by claiming more cases.

Unlike the mean, this needs every update at once. Memory is bounded by working one
tensor at a time in chunks of ``chunk_elements`` coordinates: a float64 block of
N x chunk (16 MiB for 8 sites at the default) plus the result (one model of
float32). The updates themselves are read, not copied: pass views of mapped files
(`mapped_updates`) and the page cache holds them. Cost: a sort of N values per
coordinate, O(P N log N) for P parameters, and each update read once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from shared.arrays import BFLOAT16, Array, Arrays, bfloat16_to_float32
from shared.errors import TensorError

CHUNK_ELEMENTS = 1 << 18
Block = npt.NDArray[np.float64]


def _flat(array: Array) -> Array:
    """A 1-D view (bfloat16 widened: a copy of one tensor)."""
    values = bfloat16_to_float32(array) if array.dtype == BFLOAT16 else array
    return values.reshape(-1)


def _check(updates: Sequence[Mapping[str, Array]]) -> list[str]:
    if not updates:
        raise TensorError("no updates to aggregate")
    names = sorted(updates[0])
    for update in updates[1:]:
        if sorted(update) != names:
            raise TensorError("update tensors differ from the round's model")
        for name in names:
            if update[name].shape != updates[0][name].shape:
                raise TensorError(f"tensor {name!r} differs in shape between updates")
    return names


def _reduce_chunked(
    updates: Sequence[Mapping[str, Array]],
    reduce: Callable[[Block], Block],
    chunk_elements: int,
) -> Arrays:
    """Apply ``reduce`` (N x width -> width) to every coordinate, a chunk at a time."""
    names = _check(updates)
    count = len(updates)
    block_buffer = np.empty((count, chunk_elements), dtype=np.float64)
    out: Arrays = {}
    for name in names:
        first = updates[0][name]
        floating = first.dtype == BFLOAT16 or first.dtype.kind == "f"
        flats = [_flat(update[name]) for update in updates]
        result = np.empty(first.size, dtype=np.float32 if floating else np.float64)
        for start in range(0, first.size, chunk_elements):
            stop = min(first.size, start + chunk_elements)
            block = block_buffer[:, : stop - start]
            for row, flat in enumerate(flats):
                block[row] = flat[start:stop]
            result[start:stop] = reduce(block)
        out[name] = result.reshape(first.shape)
    return out


def trimmed_mean(
    updates: Sequence[Mapping[str, Array]],
    trim_fraction: float,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Arrays:
    """Per coordinate, the mean after cutting ``floor(trim_fraction * N)`` values at each end."""
    if not 0 <= trim_fraction < 0.5:
        raise ValueError("trim_fraction must be in [0, 0.5)")
    cut = int(np.floor(trim_fraction * len(updates)))

    def reduce(block: Block) -> Block:
        if cut:
            block.sort(axis=0)
            block = block[cut : block.shape[0] - cut]
        mean: Block = block.mean(axis=0)
        return mean

    return _reduce_chunked(updates, reduce, chunk_elements)


def coordinate_median(
    updates: Sequence[Mapping[str, Array]], *, chunk_elements: int = CHUNK_ELEMENTS
) -> Arrays:
    """Per coordinate, the median of the sites' values."""

    def reduce(block: Block) -> Block:
        median: Block = np.median(block, axis=0, overwrite_input=True)
        return median

    return _reduce_chunked(updates, reduce, chunk_elements)
