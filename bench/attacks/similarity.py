"""How close a reconstruction is to the truth: MONAI's SSIM and PSNR, and label Dice.

Images are compared over the truth's own value range (``data_range`` = max - min of the
true image), so a reconstruction is judged on the scale of the data it tries to recover.
A batch of reconstructions is matched to a set of true images by the best SSIM each
reaches against any of them: the attacker wins if it recovers any case the site trained on,
whichever it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.metrics.regression import PSNRMetric, SSIMMetric

# Window of the SSIM; MONAI's default 11 is larger than the smallest images we compare.
KERNEL = 7


@dataclass(frozen=True, slots=True)
class Similarity:
    """SSIM and PSNR of one reconstruction against one true image, and the label Dice."""

    ssim: float
    psnr: float
    label_dice: float | None = None


def image_similarity(reconstruction: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """SSIM and PSNR (dB) of one image (C, *spatial) against the truth, 2-D or 3-D."""
    if reconstruction.shape != truth.shape:
        raise ValueError(f"shapes differ: {tuple(reconstruction.shape)} vs {tuple(truth.shape)}")
    x = reconstruction.detach().float().cpu()[None]
    y = truth.detach().float().cpu()[None]
    spatial = y.dim() - 2
    data_range = float(y.max() - y.min()) or 1.0
    kernel = min(KERNEL, *(s for s in y.shape[2:]))
    kernel -= 1 - kernel % 2  # odd
    ssim = SSIMMetric(spatial_dims=spatial, data_range=data_range, win_size=kernel)
    psnr = PSNRMetric(max_val=data_range)
    ssim_value = torch.as_tensor(ssim(x, y))
    psnr_value = torch.as_tensor(psnr(x, y))
    return float(ssim_value.mean()), float(psnr_value.mean())


def label_dice(probabilities: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of a recovered label map (probabilities thresholded at 0.5) over all channels.

    Both empty counts 1: nothing to recover and nothing claimed.
    """
    predicted = probabilities.detach().cpu() > 0.5
    actual = truth.detach().cpu() > 0.5
    total = int(predicted.sum() + actual.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((predicted & actual).sum()) / total


def best_matches(
    images: torch.Tensor,
    truths: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    true_labels: torch.Tensor | None = None,
) -> list[Similarity]:
    """For each reconstructed image (N, C, ...), its best-SSIM true image among ``truths``."""
    found: list[Similarity] = []
    for index, image in enumerate(images):
        scored = [(*image_similarity(image, truth), j) for j, truth in enumerate(truths)]
        ssim, psnr, best = max(scored)
        dice = None
        if labels is not None and true_labels is not None:
            dice = label_dice(labels[index], true_labels[best])
        found.append(Similarity(ssim=ssim, psnr=psnr, label_dice=dice))
    return found
