"""Client-level DP-FedAvg at the site: clip the delta to C, add the site's share of noise.

McMahan et al. (2018): the sum of the sites' clipped deltas changes by at most C when
one site's data changes, so Gaussian noise of standard deviation σ·C on that sum
gives client-level DP that Opacus' accountant prices (σ, q = 1, one step per round).
The noise is distributed: each site adds N(0, σ²C²/m) with m the run's ``min_sites``,
so any m or more sites together carry at least σ·C. Each update must count with the
same weight in FedAvg (``num_samples`` 1), which this accounting assumes.
"""

from __future__ import annotations

import math

import torch

from client.privacy.noise import NoiseSource
from shared.tensors import Tensors

EQUAL_WEIGHT = 1


def l2_norm(change: Tensors) -> float:
    """L2 norm over every floating-point tensor of a delta (float64 sums)."""
    squares = [t.double().square().sum() for t in change.values() if t.is_floating_point()]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def clip_to(change: Tensors, clip_norm: float) -> tuple[Tensors, float]:
    """Scale the floating-point tensors to an L2 norm of at most ``clip_norm``."""
    norm = l2_norm(change)
    if norm <= clip_norm:
        return dict(change), norm
    scale = clip_norm / norm
    return {
        n: (t * scale).to(t.dtype) if t.is_floating_point() else t for n, t in change.items()
    }, norm


def site_noise_std(*, clip_norm: float, noise_multiplier: float, min_sites: int) -> float:
    """Per-coordinate std of one site's share: σ·C/√m."""
    if min_sites < 1:
        raise ValueError("min_sites must be at least 1")
    return noise_multiplier * clip_norm / math.sqrt(min_sites)


def privatise(
    change: Tensors,
    *,
    clip_norm: float,
    noise_multiplier: float,
    min_sites: int,
    noise: NoiseSource,
) -> Tensors:
    """The delta to upload: clipped to ``clip_norm``, plus this site's Gaussian share.

    Integer tensors (counters such as batch-norm's) are zeroed: they would leak
    the number of steps and carry no noise.
    """
    clipped, _ = clip_to(change, clip_norm)
    std = site_noise_std(
        clip_norm=clip_norm, noise_multiplier=noise_multiplier, min_sites=min_sites
    )
    out: Tensors = {}
    for name, tensor in clipped.items():
        if tensor.is_floating_point():
            out[name] = (tensor.double() + noise.gaussian(tensor.shape, std)).to(tensor.dtype)
        else:
            out[name] = torch.zeros_like(tensor)
    return out
