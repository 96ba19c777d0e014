"""Local training with MONAI: the model, the loss, one step, and a round's steps.

``num_samples`` of a result is the number of training cases (not crops or steps): the
weight FedAvg gives a site should grow with how much data it has, not with how long
it was asked to train.

`training_step` is the one place a step happens (model, optimiser, batch in; loss
out), so that other step kinds (differential privacy) hook in beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsFloat

import numpy as np
import torch
from monai.losses.dice import DiceLoss

from client.fedprox import proximal_term
from client.training.crops import CropPool
from client.training.devices import Precision, autocast, resolve_precision
from client.training.site import SiteData
from shared import models
from shared.errors import ConfigError, DataError, TensorError
from shared.schemas import TrainingConfig
from shared.tensors import Tensors, state_tensors

if TYPE_CHECKING:
    from client.privacy.dp_sgd import DpSgdPlan

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, SupportsFloat], None]  # (step, total, loss) after each step


def build_model(
    model_name: str, model_params: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None
) -> torch.nn.Module:
    """Build a registered model and load ``weights`` after checking names and shapes."""
    model = models.build(model_name, model_params)
    if weights is not None:
        expected = state_tensors(model.state_dict())
        if set(expected) != set(weights):
            missing = sorted(set(expected) - set(weights))
            extra = sorted(set(weights) - set(expected))
            raise TensorError(
                f"weights do not fit {model_name}: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for name, tensor in expected.items():
            if tuple(weights[name].shape) != tuple(tensor.shape):
                raise TensorError(f"tensor {name!r} has the wrong shape for {model_name}")
        model.load_state_dict(dict(weights), strict=False)
    return model


def dice_loss() -> DiceLoss:
    """The loss of MONAI's BraTS tutorial: soft Dice on sigmoid outputs."""
    return DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)


def step_model(model: torch.nn.Module, device: torch.device, *, compile: bool) -> torch.nn.Module:
    """The module a step calls: ``model`` itself, or compiled (and channels-last) on a GPU.

    Compiling is opt-in (``compile: true`` in the run's training config) and only done
    on CUDA, where it pays; on CPU the step stays eager and says so once. The
    returned module shares parameters with ``model``, whose state dict stays plain.
    """
    if not compile:
        return model
    if device.type != "cuda":
        log.info("compile: true asked for, but torch.compile is used on CUDA only; eager on CPU")
        return model
    model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return torch.compile(model)  # type: ignore[return-value]


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimiser step on one batch; returns the detached loss (no device sync).

    ``penalty`` (FedProx's proximal term) is added to what is minimised; the returned
    loss stays the Dice loss.
    """
    images, labels = batch
    with autocast(images.device, dtype):
        logits = model(images)
    loss = loss_fn(logits.float(), labels)
    objective = loss if penalty is None else loss + penalty()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(objective).backward()  # type: ignore[no-untyped-call]
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def training_steps(
    model: torch.nn.Module,
    pool: CropPool,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    precision: Precision = "auto",
    compile: bool = False,
    proximal_mu: float = 0.0,
) -> Iterator[torch.Tensor]:
    """Run ``steps`` optimiser steps; yields each step's loss as a device tensor.

    ``proximal_mu`` > 0 adds FedProx's term (`client.fedprox`) to what is minimised.
    """
    device = pool.device
    dtype = resolve_precision(device, precision)
    model.to(device).train()
    runner = step_model(model, device, compile=compile)
    channels_last = runner is not model
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = dice_loss()
    rng = np.random.default_rng(seed)
    proximal = proximal_term(model, proximal_mu)
    penalty = None if proximal is None else (lambda: proximal(model))
    for _ in range(steps):
        images, labels = pool.sample(batch_size, rng)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        yield training_step(
            runner,
            optimizer,
            (images, labels),
            loss_fn=loss_fn,
            scaler=scaler,
            dtype=dtype,
            penalty=penalty,
        )


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one local training produced."""

    weights: Tensors
    num_samples: int
    loss: float
    steps: int
    seconds: float


def train(
    model_name: str,
    model_params: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    config: TrainingConfig,
    data: SiteData,
    device: torch.device,
    *,
    seed: int | None = None,
    precision: Precision = "auto",
    on_step: StepCallback | None = None,
    dp_sgd: DpSgdPlan | None = None,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train from ``weights`` for ``config.local_steps`` steps on the site's training split."""
    if dp_sgd is not None and proximal_mu > 0:  # the server refuses such runs
        raise ConfigError("FedProx's proximal term is not implemented with DP-SGD")
    started = time.perf_counter()
    train_set, _ = data.split(config)
    if not train_set:
        raise DataError("no training cases after the train/validation split")
    model = build_model(model_name, model_params, weights)
    steps: Iterator[torch.Tensor]
    if dp_sgd is not None:  # record-level DP-SGD (client/privacy/dp_sgd.py), same model
        from client.privacy.dp_sgd import private_training_steps

        steps = private_training_steps(
            model,
            train_set,
            crop_size=config.crop_size,
            device=device,
            plan=dp_sgd,
            steps=config.local_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            seed=config.seed if seed is None else seed,
        )
    else:
        steps = training_steps(
            model,
            data.pool(train_set, config.crop_size, device),
            steps=config.local_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            seed=config.seed if seed is None else seed,
            precision=precision,
            compile=config.compile,
            proximal_mu=proximal_mu,
        )
    losses = []
    for number, loss in enumerate(steps, start=1):
        losses.append(loss)
        if on_step is not None:
            on_step(number, config.local_steps, loss)  # a tensor: no device sync per step
    mean = float(torch.stack(losses).mean().item())
    if not np.isfinite(mean):
        raise TensorError("local training diverged: the loss is not finite", code="non_finite")
    return TrainResult(
        weights=state_tensors(model.state_dict()),
        num_samples=len(train_set),
        loss=mean,
        steps=config.local_steps,
        seconds=time.perf_counter() - started,
    )
