"""BraTS metrics per region (TC, WT, ET): Dice and the 95th-percentile Hausdorff distance.

BraTS conventions, which MONAI's defaults do not give: a region empty in both truth
and prediction scores Dice 1 and HD95 0; a region empty in exactly one scores Dice 0
and HD95 374 mm (the diagonal of the 240x240x155 BraTS volume). Dice comes from
MONAI's `DiceMetric` with ``ignore_empty=False`` (which gives exactly those two
Dice values); HD95 from its `HausdorffDistanceMetric` at ``percentile=95`` in
millimetres from the image spacing, called only on regions both sides have (it
returns NaN or inf, with a warning, on empty masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
from monai.metrics.hausdorff_distance import HausdorffDistanceMetric
from monai.metrics.meandice import DiceMetric

REGION_NAMES: Final = ("tc", "wt", "et")
HD95_ONE_EMPTY: Final = 374.0
METRIC_KEYS: Final = (
    *(f"dice_{r}" for r in REGION_NAMES),
    "dice_mean",
    *(f"hd95_{r}" for r in REGION_NAMES),
    "hd95_mean",
)


def case_metrics(
    prediction: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float]
) -> dict[str, float]:
    """Dice and HD95 of one case: boolean (3, X, Y, Z) prediction and truth."""
    pred, true = prediction.bool()[None], truth.bool()[None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    scores = torch.as_tensor(dice(y_pred=pred, y=true)).float().cpu()[0]
    out: dict[str, float] = {}
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    for channel, region in enumerate(REGION_NAMES):
        has_pred, has_true = bool(pred[0, channel].any()), bool(true[0, channel].any())
        out[f"dice_{region}"] = float(scores[channel])
        if not has_pred and not has_true:
            out[f"hd95_{region}"] = 0.0
        elif has_pred != has_true:
            out[f"hd95_{region}"] = HD95_ONE_EMPTY
        else:
            value = hd(
                y_pred=pred[:, channel : channel + 1],
                y=true[:, channel : channel + 1],
                spacing=[float(s) for s in spacing],
            )
            out[f"hd95_{region}"] = min(float(torch.as_tensor(value).flatten()[0]), HD95_ONE_EMPTY)
    out["dice_mean"] = sum(out[f"dice_{r}"] for r in REGION_NAMES) / 3
    out["hd95_mean"] = sum(out[f"hd95_{r}"] for r in REGION_NAMES) / 3
    return out


def mean_metrics(per_case: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over cases (all finite by the conventions above)."""
    if not per_case:
        return {}
    return {key: sum(m[key] for m in per_case) / len(per_case) for key in METRIC_KEYS}
