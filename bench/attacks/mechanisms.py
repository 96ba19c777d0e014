"""The defences an attacker faces, as one hook: ``protect(delta, config) -> what it sees``.

A mechanism that acts on the delta a site uploads fits the hook directly. Those that need
the DP branch (DP-SGD changes training itself; SVT chooses what to share and is accounted
there) are registered as ``None``: the bench prints their rows as pending instead of
inventing numbers.

`dp_fedavg` here is the attacker's view of the design's client-level DP-FedAvg (§10.1 of
the design): clip the delta to L2 norm C, add Gaussian noise with standard deviation
sigma * C / sqrt(m), the share of one site when m sites (the run's min_sites) split the
noise. It is a simulation for measuring, seeded for repeatable tables; the product's
mechanism draws its noise from a secure source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from bench.attacks.uploads import l2_norm
from shared.tensors import Tensors


@dataclass(frozen=True, slots=True)
class MechanismConfig:
    """Parameters of a defence: clip norm C, noise multiplier sigma, noise split m."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    noise_sites: int = 1
    seed: int = 0


Protect = Callable[[Mapping[str, torch.Tensor], MechanismConfig], Tensors]


def unprotected(delta: Mapping[str, torch.Tensor], config: MechanismConfig) -> Tensors:
    """No defence: the attacker sees the delta as uploaded."""
    return {name: tensor.clone() for name, tensor in delta.items()}


def dp_fedavg(delta: Mapping[str, torch.Tensor], config: MechanismConfig) -> Tensors:
    """Clip to ``clip_norm``, add N(0, (sigma * C)^2 / m) to every coordinate."""
    if config.clip_norm <= 0 or config.noise_multiplier < 0 or config.noise_sites < 1:
        raise ValueError("dp_fedavg needs clip_norm > 0, noise_multiplier >= 0, noise_sites >= 1")
    scale = min(1.0, config.clip_norm / max(l2_norm(delta), 1e-12))
    std = config.noise_multiplier * config.clip_norm / config.noise_sites**0.5
    generator = torch.Generator().manual_seed(config.seed)
    out: Tensors = {}
    for name in sorted(delta):
        tensor = delta[name].float() * scale
        out[name] = tensor + std * torch.randn(tensor.shape, generator=generator)
    return out


MECHANISMS: dict[str, Protect | None] = {
    "none": unprotected,
    "dp_fedavg": dp_fedavg,
    "dp_sgd": None,  # pending the DP mechanisms: record-level, inside training (Opacus)
    "svt": None,  # pending the DP mechanisms: selective sharing with its own accounting
}
