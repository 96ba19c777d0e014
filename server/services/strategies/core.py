"""`aggregate`: one round's updates and the run's strategy in, the next weights out.

The mean family streams through the existing `Accumulator` (one model of memory
for any number of sites); FedAvg with by-cases weighting and no norm bound is that
accumulator unchanged, so today's runs produce the same bytes. The norm bound
needs the median of the update norms before any update is added, so it reads the
updates twice (norms, then the weighted sum): still O(model) memory. The robust
strategies work chunk by chunk (see `robust`). The server optimisers step on the
mean delta and carry a `ServerState` from round to round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.services.aggregation import Accumulator
from server.services.strategies.optimisers import ServerState, new_state, server_step
from server.services.strategies.robust import CHUNK_ELEMENTS, coordinate_median, trimmed_mean
from server.services.strategies.updates import SiteUpdate
from server.services.strategies.weighting import site_weights
from shared.aggregation import (
    AggregationConfig,
    FedAdam,
    FedAvgM,
    FedYogi,
    Median,
    TrimmedMean,
)
from shared.arrays import (
    BFLOAT16,
    Array,
    Arrays,
    bfloat16_to_float32,
    float32_to_bfloat16,
    spec_of,
)
from shared.errors import TensorError


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A closed round: the new weights, the optimiser state to keep, each site's weight."""

    weights: Arrays
    state: ServerState | None
    site_weights: list[float]


def apply_delta(base: Mapping[str, Array], delta: Mapping[str, Array]) -> Arrays:
    """``base + delta`` in the base's dtypes (integer tensors add the rounded delta)."""
    if set(base) != set(delta):
        raise TensorError("base model and round disagree on tensor names")
    out: Arrays = {}
    for name, array in base.items():
        change = delta[name]
        if change.shape != array.shape:
            raise TensorError(f"tensor {name!r} has shape {list(change.shape)} in the delta")
        if array.dtype == BFLOAT16:
            out[name] = float32_to_bfloat16(
                (bfloat16_to_float32(array) + change).astype(np.float32)
            )
        elif array.dtype.kind == "f":
            out[name] = (array.astype(np.float32) + change).astype(array.dtype)
        else:
            out[name] = array + np.rint(change).astype(array.dtype)
    return out


def update_norm(arrays: Mapping[str, Array]) -> float:
    """L2 norm over the floating-point tensors of a delta (float64 sums)."""
    total = 0.0
    for array in arrays.values():
        if array.dtype == BFLOAT16:
            flat = bfloat16_to_float32(array).reshape(-1)
        elif array.dtype.kind == "f":
            flat = array.reshape(-1)
        else:
            continue
        total += float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
    return float(np.sqrt(total))


def clip_scales(norms: Sequence[float], factor: float, voting: Sequence[bool]) -> list[float]:
    """Per update, the scale that brings its norm to at most ``factor`` x the median norm.

    The median is over the updates that count (``voting``); one that is already
    within the bound keeps scale 1.
    """
    counted = [norm for norm, vote in zip(norms, voting, strict=True) if vote]
    if not counted:
        return [1.0] * len(norms)
    bound = factor * float(np.median(counted))
    return [1.0 if norm <= bound else bound / norm for norm in norms]


def aggregate(
    config: AggregationConfig,
    *,
    base: Mapping[str, Array],
    updates: Sequence[SiteUpdate],
    state: ServerState | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Aggregate:
    """The next round's weights from ``base`` and the round's updates under ``config``.

    The updates must already be validated against the round's spec (intake does it).
    A server optimiser's ``state`` (a new one when None) is advanced in place and
    returned in the result: persist ``result.state.to_bytes()`` with the round, and
    reload it from there (never reuse the object) if closing the round fails.
    """
    counts = [update.num_samples for update in updates]
    if isinstance(config, TrimmedMean | Median):
        voters = [update.arrays for update in updates if update.num_samples > 0]
        if not voters:
            raise TensorError("no update with cases to aggregate", code="bad_num_samples")
        if isinstance(config, TrimmedMean):
            delta = trimmed_mean(voters, config.trim_fraction, chunk_elements=chunk_elements)
        else:
            delta = coordinate_median(voters, chunk_elements=chunk_elements)
        equal = [1.0 if count > 0 else 0.0 for count in counts]
        return Aggregate(weights=apply_delta(base, delta), state=None, site_weights=equal)

    weights = site_weights(counts, weighting=config.weighting, max_share=config.max_share)
    scales = [1.0] * len(updates)
    if config.norm_bound_factor is not None:
        norms = [update_norm(update.arrays) for update in updates]
        scales = clip_scales(norms, config.norm_bound_factor, [w > 0 for w in weights])
    accumulator = Accumulator(spec_of(base))
    for update, weight, scale in zip(updates, weights, scales, strict=True):
        accumulator.add(update.arrays, weight * scale)
    # A clipped update is scaled, not down-weighted: its site keeps its full weight
    # in the denominator, so the mean is sum(w_i * s_i * d_i) / sum(w_i).
    accumulator.total_weight = float(sum(weights))

    if isinstance(config, FedAvgM | FedAdam | FedYogi):
        spec = spec_of(base)
        current = state if state is not None else new_state(config, spec)
        step = server_step(config, current, accumulator.mean())
        return Aggregate(weights=apply_delta(base, step), state=current, site_weights=weights)
    return Aggregate(weights=accumulator.consensus(base), state=None, site_weights=weights)
