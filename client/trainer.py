"""The agent's trainer: `client.training` over the site's cached data, per task.

Evaluation fits the round: the received model is scored every ``eval_every`` rounds
(round 1 always) on at most ``eval_max_cases`` validation cases, the same ones each
time (the first by id); `evaluate_all` scores every validation case, for a final model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from client.data.cache import CachedCase
from client.progress import StepMeter
from client.training import (
    Precision,
    SiteData,
    TrainResult,
    evaluate,
    evaluation_roi,
    train,
)
from shared.schemas import Task
from shared.tensors import Tensors

if TYPE_CHECKING:
    from client.privacy.dp_sgd import DpSgdPlan

log = logging.getLogger("client.progress")


class LocalTrainer:
    """`client.agent.Trainer` over `client.training` and data loaded once per process."""

    def __init__(self, data: SiteData, device: torch.device, precision: Precision = "auto") -> None:
        self.data = data
        self.device = device
        self.precision = precision
        self._logged_split: set[tuple[object, ...]] = set()

    def _log_split(self, task: Task) -> None:
        config = task.training
        key = (task.run_id, config.val_fraction, config.seed, config.min_train)
        if key not in self._logged_split:
            self._logged_split.add(key)
            log.info("run %s: %s", task.run_id, self.data.plan(config).describe())

    def evaluate(self, task: Task, weights: Tensors) -> dict[str, float]:
        """Dice and HD95 of the received model, when this round is an evaluation round."""
        config = task.training
        self._log_split(task)
        if (task.round - 1) % config.eval_every:
            log.info("round %d: evaluation skipped (eval_every=%d)", task.round, config.eval_every)
            return {}
        _, val = self.data.split(config)
        return self._score(task, weights, val[: config.eval_max_cases])

    def evaluate_all(self, task: Task, weights: Tensors) -> dict[str, float]:
        """Dice and HD95 on every validation case (the final model's score)."""
        _, val = self.data.split(task.training)
        return self._score(task, weights, val)

    def _score(self, task: Task, weights: Tensors, val: Sequence[CachedCase]) -> dict[str, float]:
        if not val:
            log.info("round %d: no validation case; evaluation skipped", task.round)
            return {}
        started = time.perf_counter()
        metrics = evaluate(
            task.model,
            task.model_params,
            weights,
            val,
            self.device,
            roi_size=evaluation_roi(task.training.crop_size),
            precision=self.precision,
        )
        log.info(
            "round %d: evaluated %d cases in %.1f s: Dice %.3f, HD95 %.1f mm",
            task.round,
            len(val),
            time.perf_counter() - started,
            metrics["dice_mean"],
            metrics["hd95_mean"],
        )
        return metrics

    def train_cases(self, task: Task) -> int:
        """The number of training cases the task's split leaves here (what the policy weighs)."""
        return len(self.data.plan(task.training).train)

    def train(
        self, task: Task, weights: Tensors, *, dp_sgd: DpSgdPlan | None = None
    ) -> TrainResult:
        """Train with a seed drawn from the run, round and config: reproducible per round.

        With ``dp_sgd`` the steps are Opacus' DP-SGD (`client.privacy.dp_sgd`) at the
        noise and sampling rate the site's decision priced. The task's ``proximal_mu``
        (FedProx) adds the proximal term to the loss.
        """
        self._log_split(task)
        digest = hashlib.sha256(f"{task.run_id}/{task.round}/{task.training.seed}".encode())
        seed = int.from_bytes(digest.digest()[:4], "big")
        train_set, _ = self.data.split(task.training)
        label = f"round {task.round}: training"
        log.info(
            "%s %d steps on %d cases%s",
            label,
            task.training.local_steps,
            len(train_set),
            "" if dp_sgd is None else f" with DP-SGD (σ {dp_sgd.noise_multiplier:.3g})",
        )
        return train(
            task.model,
            task.model_params,
            weights,
            task.training,
            self.data,
            self.device,
            seed=seed,
            precision=self.precision,
            on_step=StepMeter(label, task.training.local_steps),
            dp_sgd=dp_sgd,
            proximal_mu=task.proximal_mu,
        )
