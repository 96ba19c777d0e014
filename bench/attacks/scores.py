"""ROC AUC and TPR at a fixed false-positive rate for membership scores.

Higher score means "more likely a member". sklearn is not a dependency, so the AUC is the
Mann-Whitney U statistic from average ranks (ties count one half), which equals the area
under the ROC curve exactly.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata


def _check(members: ArrayLike, others: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(members, dtype=np.float64).ravel()
    neg = np.asarray(others, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("membership scores must be finite")
    return pos, neg


def roc_auc(members: ArrayLike, others: ArrayLike) -> float:
    """P(score of a random member > score of a random non-member), ties counting 1/2."""
    pos, neg = _check(members, others)
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = float(ranks[: pos.size].sum()) - pos.size * (pos.size + 1) / 2
    return u / (pos.size * neg.size)


def tpr_at_fpr(members: ArrayLike, others: ArrayLike, fpr: float = 0.01) -> float:
    """Largest true-positive rate of a threshold rule whose false-positive rate is <= ``fpr``.

    The rule calls "member" when the score is strictly above a threshold; the threshold is
    the lowest one keeping at most ``floor(fpr * n_others)`` non-members above it. With fewer
    than 100 non-members at 1% that means no false positive at all: the threshold is the
    highest non-member score.
    """
    if not 0.0 <= fpr < 1.0:
        raise ValueError("fpr must be in [0, 1)")
    pos, neg = _check(members, others)
    allowed = int(np.floor(fpr * neg.size + 1e-12))
    threshold = np.sort(neg)[::-1][allowed] if allowed < neg.size else -np.inf
    return float((pos > threshold).mean())
