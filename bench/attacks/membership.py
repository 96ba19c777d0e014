"""Membership inference against a model: is this case in its training set?

- Loss threshold (Yeom et al. 2018): a model fits its members better, so a lower loss
  means "member"; the score is minus the loss.
- Calibrated (Watson et al. 2022, "difficulty calibration"): some cases are easy for any
  model. Reference models trained the same way on other data give each case's expected
  loss; the score is how much lower the target's loss is than that expectation.

Scores feed `scores.roc_auc` and `scores.tpr_at_fpr`; higher always means "member".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from bench.attacks.scores import roc_auc, tpr_at_fpr


@dataclass(frozen=True, slots=True)
class MembershipResult:
    """How well scores separate members from held-out cases."""

    auc: float
    tpr_at_1pct_fpr: float
    members: int
    others: int


def loss_threshold_scores(losses: ArrayLike) -> np.ndarray:
    """Yeom et al.: minus the per-example loss."""
    return -np.asarray(losses, dtype=np.float64)


def calibrated_scores(losses: ArrayLike, reference_losses: ArrayLike) -> np.ndarray:
    """Minus (target loss - mean reference loss) per example; references are (models, examples)."""
    target = np.asarray(losses, dtype=np.float64)
    reference = np.asarray(reference_losses, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[1] != target.shape[0]:
        raise ValueError("reference_losses must be (reference models, examples)")
    scores: np.ndarray = -(target - reference.mean(axis=0))
    return scores


def judge(member_scores: ArrayLike, other_scores: ArrayLike) -> MembershipResult:
    """ROC AUC and TPR at 1% FPR of member versus held-out scores."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(other_scores, dtype=np.float64)
    return MembershipResult(
        auc=roc_auc(members, others),
        tpr_at_1pct_fpr=tpr_at_fpr(members, others, 0.01),
        members=int(members.size),
        others=int(others.size),
    )


def example_losses(
    model: torch.nn.Module,
    examples: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """The loss of ``model`` on each (input, target) pair, inputs without a batch axis."""
    model.eval()
    out = []
    with torch.inference_mode():
        for inputs, target in examples:
            batch = inputs[None]
            output = predict(model, batch) if predict is not None else model(batch)
            out.append(float(loss_fn(output, target[None])))
    return np.asarray(out, dtype=np.float64)
