"""Record-level DP-SGD at the site with Opacus: the record is a training case.

Each step draws a Poisson sample of the site's training cases (each case in with
probability q = batch / cases, so the batch size varies and may be empty), takes one
augmented crop per drawn case, and lets Opacus' `DPOptimizer` clip each case's
gradient to ``max_grad_norm`` and add Gaussian noise σ·max_grad_norm before Adam's
update. One crop per case per step is what makes a case the unit the accountant's
(σ, q, steps) protect: a patient with several volumes is several records
(docs/privacy.md).

Per-example gradients use Opacus' ``grad_sample_mode="ew"`` (torch expanded
weights): MONAI's SegResNet adds its residual in place, which the default hook mode
cannot follow. The noise and the sampling come from `NoiseSource` (ChaCha20 keyed by
the OS, or by ``seed`` in tests and benchmarks); ``secure_mode`` refuses a seed and
sums four Gaussian draws per coordinate, as Opacus' secure mode does against
floating-point attacks. Training runs in float32 (no autocast).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers.optimizer import DPOptimizer

from client.data.cache import CachedCase
from client.privacy.noise import NoiseSource
from client.training.crops import CropPool
from client.training.steps import dice_loss
from shared.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DpSgdPlan:
    """The DP-SGD parameters of one round, as the decision priced them."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    secure_mode: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        """Refuse a plan whose noise someone could replay."""
        if self.secure_mode and self.seed is not None:
            raise ConfigError("secure_mode draws its noise from the OS; it takes no seed")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError("the DP-SGD sampling rate must lie in (0, 1]")


class _NoisyOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus' DPOptimizer with its Gaussian noise drawn from a `NoiseSource`."""

    def __init__(self, *args: Any, noise: NoiseSource, secure: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noise = noise
        self.secure = secure

    def add_noise(self) -> None:
        """Add N(0, (σ·C)²) to each clipped, summed gradient (as Opacus does)."""
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            if self.secure:  # mean of four draws, doubled: std unchanged, no single draw seen
                draws = sum(self.noise.gaussian(summed.shape, std) for _ in range(4))
                sample = torch.as_tensor(draws) / 2.0
            else:
                sample = self.noise.gaussian(summed.shape, std)
            p.grad = (summed + sample.to(summed.device, summed.dtype)).view_as(p)


def private_training_steps(
    model: torch.nn.Module,
    volumes: Sequence[CachedCase],
    *,
    crop_size: int,
    device: torch.device,
    plan: DpSgdPlan,
    steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> Iterator[torch.Tensor]:
    """Run ``steps`` DP-SGD steps; yields each step's loss (zero for an empty sample)."""
    if not volumes:
        raise ConfigError("DP-SGD needs at least one training case")
    model.to(device).train()
    pools = [CropPool([volume], crop_size, device) for volume in volumes]
    private = wrap_model(model, grad_sample_mode="ew", loss_reduction="mean")
    noise = NoiseSource(seed=plan.seed)
    optimizer = _NoisyOptimizer(
        torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=batch_size,
        loss_reduction="mean",
        noise=noise,
        secure=plan.secure_mode,
    )
    loss_fn = dice_loss()
    rng = np.random.default_rng(seed)  # augmentation only; privacy randomness is `noise`
    parameters = [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        drawn = torch.nonzero(noise.bernoulli(len(pools), plan.sample_rate)).flatten().tolist()
        optimizer.zero_grad(set_to_none=True)
        if drawn:
            crops = [pools[i].sample(1, rng) for i in drawn]
            images = torch.cat([image for image, _ in crops])
            labels = torch.cat([label for _, label in crops])
            loss = loss_fn(private(images).float(), labels)
            loss.backward()
        else:  # an empty Poisson sample still takes a step: noise only, as accounted
            loss = torch.zeros((), device=device)
            for p in parameters:
                empty = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                p.grad_sample = empty  # type: ignore[attr-defined]
        optimizer.step()
        yield loss.detach()
