"""What a site uploads, produced by the real client training code, and the crops behind it.

`site_upload` trains exactly as a site does (`client.training.train`: its split, its crop
sampler, Adam, its loss) and returns the delta it would seal, plus every augmented crop
the site's model saw, for scoring a reconstruction. The crops are replayed, not captured:
`client.training.training_steps` draws batch ``i`` with ``pool.sample(batch_size, rng)``
from the site's `client.training.CropPool` (``SiteData.pool``) and
``numpy.random.default_rng(seed)``, and nothing else consumes that generator, so the same
pool and seed replay the same crops, flips and jitter (a test pins this).

Under DP-SGD (`client.privacy.dp_sgd.private_training_steps`) each step draws a Poisson
sample of the cases from the plan's seeded `NoiseSource`, one crop per drawn case from
its own pool, and then the Gaussian noise of every parameter from the same stream;
`seen_private_crops` replays exactly that (a test pins it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.privacy.dp_sgd import DpSgdPlan
from client.privacy.noise import NoiseSource
from client.training import CropPool, SiteData, train
from shared import models
from shared.schemas import TrainingConfig
from shared.tensors import Tensors, delta


@dataclass(frozen=True, slots=True)
class SiteUpload:
    """One site's round: the delta it uploads, its weight, and what it trained on."""

    delta: Tensors
    num_samples: int
    crops: torch.Tensor  # (steps * batch, 4, c, c, c) as the model saw them
    crop_labels: torch.Tensor  # (steps * batch, 3, c, c, c) TC, WT, ET
    members: tuple[str, ...]  # the case ids of its training split


def seen_crops(
    data: SiteData, config: TrainingConfig, *, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch `client.training.training_steps` draws for ``config`` and ``seed``."""
    train_set, _ = data.split(config)
    pool = data.pool(train_set, config.crop_size, device)
    rng = np.random.default_rng(seed)
    batches = [pool.sample(config.batch_size, rng) for _ in range(config.local_steps)]
    images = torch.cat([b[0] for b in batches]).cpu()
    labels = torch.cat([b[1] for b in batches]).cpu()
    return images, labels


def seen_private_crops(
    data: SiteData,
    config: TrainingConfig,
    plan: DpSgdPlan,
    parameter_shapes: Sequence[torch.Size],
    *,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every crop DP-SGD training drew for ``plan`` and ``seed`` (possibly none at a step).

    ``parameter_shapes`` are the trainable parameters in order: their noise is drawn from
    the stream between one step's Poisson sample and the next, so the replay draws it too.
    """
    if plan.secure_mode or plan.seed is None:
        raise ValueError("only a seeded, non-secure DP-SGD plan can be replayed")
    train_set, _ = data.split(config)
    pools = [CropPool([volume], config.crop_size, device) for volume in train_set]
    noise = NoiseSource(seed=plan.seed)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(config.local_steps):
        drawn = torch.nonzero(noise.bernoulli(len(pools), plan.sample_rate)).flatten().tolist()
        for index in drawn:
            image, label = pools[index].sample(1, rng)
            images.append(image.cpu())
            labels.append(label.cpu())
        for shape in parameter_shapes:
            noise.gaussian(shape, 1.0)
    if not images:
        c = config.crop_size
        return torch.zeros((0, 4, c, c, c)), torch.zeros((0, 3, c, c, c))
    return torch.cat(images), torch.cat(labels)


def parameter_shapes(model_name: str, model_params: Mapping[str, Any]) -> list[torch.Size]:
    """The trainable parameters' shapes in the optimiser's order (DP-SGD noises each)."""
    model = models.build(model_name, model_params)
    return [p.shape for p in model.parameters() if p.requires_grad]


def site_upload(
    *,
    model_name: str,
    model_params: Mapping[str, Any],
    base: Mapping[str, torch.Tensor],
    config: TrainingConfig,
    data: SiteData,
    device: torch.device,
    seed: int,
    dp_sgd: DpSgdPlan | None = None,
) -> SiteUpload:
    """Train one round as a site does (fp32, DP-SGD under ``dp_sgd``): its delta and crops."""
    result = train(
        model_name, model_params, base, config, data, device, seed=seed, precision="fp32",
        dp_sgd=dp_sgd,
    )  # fmt: skip
    if dp_sgd is None:
        images, labels = seen_crops(data, config, seed=seed, device=device)
    else:
        images, labels = seen_private_crops(
            data, config, dp_sgd, parameter_shapes(model_name, model_params), seed=seed,
            device=device,
        )  # fmt: skip
    train_set, _ = data.split(config)
    return SiteUpload(
        delta=delta(result.weights, base),
        num_samples=result.num_samples,
        crops=images,
        crop_labels=labels,
        members=tuple(c.case_id for c in train_set),
    )


def weighted_mean(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[int]) -> Tensors:
    """The FedAvg mean of several deltas: all that secure aggregation lets the server see.

    The protocol (shared/secagg) reveals this sum up to fixed-point rounding, which its own
    tests bound; the rounding is far below anything that matters to an attack, so the bench
    computes the mean directly rather than running the key exchange.
    """
    if not deltas or len(deltas) != len(weights):
        raise ValueError("need one weight per delta")
    total = float(sum(weights))
    return {
        name: sum(
            (d[name] * (w / total) for d, w in zip(deltas, weights, strict=True)),
            torch.zeros_like(deltas[0][name]),
        )
        for name in deltas[0]
    }


def l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of an update taken as one flat vector."""
    return float(torch.stack([(t.double() ** 2).sum() for t in tensors.values()]).sum().sqrt())
