"""Gradient inversion in the style of Geiping et al. 2020, "Inverting Gradients".

The attacker knows the model, the base weights and the training configuration, and sees
an update. It draws dummy images (and, unless told the labels, dummy label logits), and
optimises them so that the update they would produce points the same way as the one it
saw: loss = 1 - cosine(observed, simulated) over all parameters at once, plus a total-
variation prior on the images; Adam on the sign of the input gradient, learning rate
divided by 10 at 3/8, 5/8 and 7/8 of the iterations; several restarts from fresh noise,
keeping the one with the lowest loss (the attacker never sees the truth).

What "the update it would produce" is, is the `UpdateModel`:

- ``gradient``: the plain gradient at the base weights. Right for one SGD step, and for
  a multi-step delta it is the paper's cheap variant: -delta / lr is the sum of the k step
  gradients, and the cosine distance ignores the scale, so lr need not be known.
- ``adam``: what fedseg's sites really do. A site trains with Adam, whose steps are
  m / (sqrt(v) + eps); its first step is exactly -lr * sign(g) per coordinate, and over a
  few steps at a small lr it stays close to the sign of the mean gradient. So the
  simulated update is a smooth sign, g / sqrt(g^2 + tau^2) with tau a tenth of the mean
  |g|: differentiable (the exact sign has no gradient) and equal to the sign wherever
  |g| >> tau. We do not unroll the k steps: each step's crops are new random crops, so
  unrolling would mean reconstructing k * batch crops at k times the cost per iteration,
  which the CPU table cannot afford; the reconstructed batch is instead matched against
  every crop the site trained on (`similarity.best_matches`).

Labels: ``optimise`` recovers a label map too (sigmoid of free logits, what a real
attacker must do); ``known`` hands the attacker the true labels, an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
UpdateModel = Literal["gradient", "adam"]
LabelMode = Literal["optimise", "known"]
SMOOTH_SIGN = 0.1  # tau as a fraction of the mean |g| of the simulated gradient


@dataclass(frozen=True, slots=True)
class InversionConfig:
    """How hard the attacker tries; the defaults suit a tiny model on a CPU."""

    iterations: int = 200
    restarts: int = 2
    learning_rate: float = 0.1
    tv_weight: float = 1e-2
    update_model: UpdateModel = "gradient"
    labels: LabelMode = "optimise"
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Reconstruction:
    """The attacker's best guess: images, label probabilities (if optimised), final loss."""

    images: torch.Tensor
    labels: torch.Tensor | None
    distance: float


def cosine_distance(
    observed: Sequence[torch.Tensor], simulated: Sequence[torch.Tensor]
) -> torch.Tensor:
    """1 - cosine similarity of two updates taken as one flat vector each."""
    dot = torch.stack([(a * b).sum() for a, b in zip(observed, simulated, strict=True)]).sum()
    norm_a = torch.stack([(a * a).sum() for a in observed]).sum().sqrt()
    norm_b = torch.stack([(b * b).sum() for b in simulated]).sum().sqrt()
    return 1.0 - dot / (norm_a * norm_b + 1e-12)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels or voxels, over every spatial axis."""
    spatial = range(2, images.dim())
    return sum((torch.diff(images, dim=axis).abs().mean() for axis in spatial), torch.zeros(()))


def simulate_update(grads: Sequence[torch.Tensor], update_model: UpdateModel) -> list[torch.Tensor]:
    """The update a site would derive from ``grads``, up to scale (see the module notes)."""
    if update_model == "gradient":
        return list(grads)
    mean_abs = torch.stack([g.abs().sum() for g in grads]).sum() / sum(g.numel() for g in grads)
    tau = (SMOOTH_SIGN * mean_abs).detach() + 1e-12
    return [g / torch.sqrt(g * g + tau * tau) for g in grads]


def invert(
    *,
    model: torch.nn.Module,
    base: Mapping[str, torch.Tensor],
    observed: Mapping[str, torch.Tensor],
    image_shape: Sequence[int],
    loss_fn: LossFn,
    config: InversionConfig,
    labels: torch.Tensor | None = None,
    label_shape: Sequence[int] | None = None,
) -> Reconstruction:
    """Recover a batch of inputs of ``image_shape`` (N, C, ...) from an ``observed`` update.

    ``observed`` is in the direction of a gradient: pass ``-delta`` for a site's delta.
    ``labels`` are required when ``config.labels == "known"``; otherwise ``label_shape``
    says the shape of the label logits to optimise (sigmoid, one channel per region).
    """
    names = [name for name, _ in model.named_parameters()]
    missing = [name for name in names if name not in observed or name not in base]
    if missing:
        raise ValueError(f"the update lacks parameters the model has: {missing[:3]}")
    if config.labels == "known" and labels is None:
        raise ValueError("labels='known' needs the true labels")
    if config.labels == "optimise" and label_shape is None:
        raise ValueError("labels='optimise' needs label_shape")
    device = next(model.parameters()).device
    params = {n: base[n].detach().to(device).float().requires_grad_() for n in names}
    target = [observed[n].detach().to(device).float() for n in names]
    model.train()
    best: Reconstruction | None = None
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.restarts):
        found = _one_restart(
            model, params, target, image_shape, loss_fn, config, labels, label_shape, generator
        )
        if best is None or found.distance < best.distance:
            best = found
    assert best is not None
    return best


def _one_restart(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    target: list[torch.Tensor],
    image_shape: Sequence[int],
    loss_fn: LossFn,
    config: InversionConfig,
    labels: torch.Tensor | None,
    label_shape: Sequence[int] | None,
    generator: torch.Generator,
) -> Reconstruction:
    device = target[0].device
    dummy = torch.randn(tuple(image_shape), generator=generator).to(device).requires_grad_()
    variables = [dummy]
    logits: torch.Tensor | None = None
    if config.labels == "optimise":
        assert label_shape is not None
        logits = torch.randn(tuple(label_shape), generator=generator).to(device).requires_grad_()
        variables.append(logits)
    optimiser = torch.optim.Adam(variables, lr=config.learning_rate)
    n = config.iterations
    milestones = sorted({max(1, n * 3 // 8), max(1, n * 5 // 8), max(1, n * 7 // 8)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
    distance = torch.tensor(float("inf"))

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        target_labels = torch.sigmoid(logits) if logits is not None else labels
        assert target_labels is not None
        output = functional_call(model, params, (dummy,))
        grads = torch.autograd.grad(
            loss_fn(output, target_labels), list(params.values()), create_graph=True
        )
        gap = cosine_distance(target, simulate_update(grads, config.update_model))
        return gap + config.tv_weight * total_variation(dummy), gap

    for _ in range(n):
        optimiser.zero_grad(set_to_none=True)
        total, distance = objective()
        found = torch.autograd.grad(total, variables)
        for variable, grad in zip(variables, found, strict=True):
            variable.grad = grad.sign() if variable is dummy else grad
        optimiser.step()
        schedule.step()
    _, distance = objective()
    return Reconstruction(
        images=dummy.detach().cpu(),
        labels=torch.sigmoid(logits).detach().cpu() if logits is not None else None,
        distance=float(distance.detach()),
    )
