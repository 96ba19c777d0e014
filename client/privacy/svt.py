"""The seed paper's selective sharing with the sparse vector technique, accounted honestly.

Li et al. (MICCAI 2019) share only a fraction of the delta's coordinates, chosen by
SVT. Here, per round, with n coordinates, c = ⌊fraction·n⌋ to share, clip γ, threshold
τ and the round's ε split in three equal parts ε₁ = ε₂ = ε₃ = ε/3:

1. clip every coordinate to [-γ, γ]; each query |wᵢ| then lies in [0, γ], so its
   sensitivity is γ whatever the site's data (a site-level bound);
2. noisy threshold T = τ + Lap(γ/ε₁);
3. visit the coordinates in a random order; coordinate i passes when
   |wᵢ| + Lap(2cγ/ε₂) ≥ T; stop after c passes (SVT with c positive answers);
4. release each passing coordinate as clip(wᵢ + Lap(2cγ/ε₃), γ) (a value in [-γ, γ]
   has sensitivity 2γ, c of them 2cγ); every other coordinate is sent as zero.

Steps 2-3 are ε₁ + ε₂-DP (Lyu, Su and Li 2017, Alg. 1), step 4 ε₃-DP, so one round
is pure ε-DP and rounds add up with no resets. Because c grows with the model, the
noise a useful fraction needs at a small ε swamps γ: the ledger shows what the
paper's settings really cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from client.privacy.noise import NoiseSource
from shared.tensors import Tensors

SPLIT = 3  # ε₁ = ε₂ = ε₃ = ε / SPLIT


@dataclass(frozen=True, slots=True)
class SvtScales:
    """The three Laplace scales of one round and the number of coordinates to share."""

    count: int
    threshold: float
    query: float
    value: float


def svt_scales(*, epsilon: float, fraction: float, coordinates: int, clip: float) -> SvtScales:
    """The Laplace scales that make one round ``epsilon``-DP (module docstring)."""
    count = math.floor(fraction * coordinates)
    part = epsilon / SPLIT
    return SvtScales(
        count=count,
        threshold=clip / part,
        query=2 * max(count, 1) * clip / part,
        value=2 * max(count, 1) * clip / part,
    )


def svt_epsilon(scales: SvtScales, *, clip: float) -> float:
    """ε of one round from its scales: γ/b₁ + 2cγ/b₂ + 2cγ/b₃ (docs/privacy.md)."""
    count = max(scales.count, 1)
    return (
        clip / scales.threshold + 2 * count * clip / scales.query + 2 * count * clip / scales.value
    )


def share(
    change: Tensors,
    *,
    fraction: float,
    epsilon: float,
    threshold: float,
    clip: float,
    noise: NoiseSource,
) -> tuple[Tensors, int]:
    """The delta to upload, at most ``fraction`` of it non-zero; returns it and the count."""
    names = [n for n, t in change.items() if t.is_floating_point()]
    flat = torch.cat([change[n].detach().double().reshape(-1) for n in names]) if names else None
    out: Tensors = {n: torch.zeros_like(t) for n, t in change.items()}
    if flat is None or flat.numel() == 0:
        return out, 0
    scales = svt_scales(epsilon=epsilon, fraction=fraction, coordinates=flat.numel(), clip=clip)
    if scales.count == 0:
        return out, 0
    clipped = flat.clamp(-clip, clip)
    order = noise.permutation(flat.numel())
    noisy_threshold = threshold + float(noise.laplace((1,), scales.threshold)[0])
    passes = clipped.abs()[order] + noise.laplace((flat.numel(),), scales.query) >= noisy_threshold
    chosen = order[passes][: scales.count]
    released = torch.zeros_like(flat)
    values = clipped[chosen] + noise.laplace((chosen.numel(),), scales.value)
    released[chosen] = values.clamp(-clip, clip)
    offset = 0
    for name in names:
        size = change[name].numel()
        out[name] = (
            released[offset : offset + size].reshape(change[name].shape).to(change[name].dtype)
        )
        offset += size
    return out, int(chosen.numel())
