"""The defences an attacker faces, as one hook: ``protect(delta, config) -> what it sees``.

A mechanism that acts on the delta a site uploads fits the hook directly: dp_fedavg and
svt (the product's `client.privacy.svt.share`, its noise from a seeded `NoiseSource`).
DP-SGD acts inside training instead (the bench trains those sites with a
`client.privacy.dp_sgd.DpSgdPlan`), so its hook passes the trained delta on unchanged.

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
from client.privacy.noise import NoiseSource
from client.privacy.svt import share
from shared.tensors import Tensors


@dataclass(frozen=True, slots=True)
class MechanismConfig:
    """Parameters of a defence: dp_fedavg's C, sigma and noise split m; svt's four."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    noise_sites: int = 1
    svt_fraction: float = 0.1
    svt_epsilon: float = 1.0  # pure epsilon per round
    svt_threshold: float = 1e-6
    svt_clip: float = 1e-4  # each coordinate clipped to +-this
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


def svt(delta: Mapping[str, torch.Tensor], config: MechanismConfig) -> Tensors:
    """The site's selective sharing: at most ``svt_fraction`` of the coordinates, noised."""
    shared, _ = share(
        dict(delta),
        fraction=config.svt_fraction,
        epsilon=config.svt_epsilon,
        threshold=config.svt_threshold,
        clip=config.svt_clip,
        noise=NoiseSource(seed=config.seed),
    )
    return shared


MECHANISMS: dict[str, Protect] = {
    "none": unprotected,
    "dp_fedavg": dp_fedavg,
    "dp_sgd": unprotected,  # the noise is in training: sites train with a DpSgdPlan
    "svt": svt,
}
