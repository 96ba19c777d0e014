"""How much each site's update counts: by cases, equally, or by cases under a cap.

A site reports its own ``num_samples``; by-cases weighting trusts it, so one site
claiming 10^9 cases would own the model. Capped weighting gives each site its
by-cases share but never more than ``max_share``: the excess is spread over the
others in proportion to their cases (water-filling), so shares still sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.aggregation import Weighting
from shared.errors import TensorError


def capped_shares(num_samples: Sequence[float], max_share: float) -> list[float]:
    """Shares proportional to ``num_samples``, none above ``max_share``, summing to 1.

    Sites with no cases get 0. When the cap cannot be met (fewer than
    ``1 / max_share`` sites with cases), every such site gets an equal share: the
    closest to the cap that still sums to 1. All zero: all shares 0.
    """
    if not 0 < max_share <= 1:
        raise ValueError("max_share must be in (0, 1]")
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.size and (counts < 0).any():
        raise TensorError("case counts cannot be negative", code="bad_num_samples")
    positive = counts > 0
    shares = np.zeros_like(counts)
    if not positive.any():
        return [float(share) for share in shares]
    if max_share * int(positive.sum()) <= 1:
        shares[positive] = 1.0 / int(positive.sum())
        return [float(share) for share in shares]
    capped = np.zeros_like(positive)
    while True:  # at most one pass per site: each pass caps at least one more or stops
        free = positive & ~capped
        remaining = 1.0 - max_share * int(capped.sum())
        shares[capped] = max_share
        shares[free] = remaining * counts[free] / counts[free].sum()
        over = free & (shares > max_share)
        if not over.any():
            return [float(share) for share in shares]
        capped |= over


def site_weights(
    num_samples: Sequence[int], *, weighting: Weighting, max_share: float | None = None
) -> list[float]:
    """The weight of each site's update in the mean (they need not sum to 1)."""
    if any(count < 0 for count in num_samples):
        raise TensorError("case counts cannot be negative", code="bad_num_samples")
    if weighting == "cases":
        return [float(count) for count in num_samples]
    if weighting == "equal":
        return [1.0 if count > 0 else 0.0 for count in num_samples]
    if max_share is None:
        raise ValueError("capped weighting needs max_share")
    return capped_shares(num_samples, max_share)
