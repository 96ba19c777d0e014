"""Evaluation: sliding-window inference over whole validation cases, BraTS metrics.

Cases are read from the cache one at a time, so evaluating holds one volume. On a
GPU the window runs in the autocast dtype (bf16 or fp16), as training does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers.utils import sliding_window_inference

from client.data.cache import CachedCase
from client.training.devices import Precision, autocast, resolve_precision
from client.training.metrics import case_metrics, mean_metrics
from client.training.steps import build_model
from shared.errors import DataError


def evaluate(
    model_name: str,
    model_params: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    cases: Sequence[CachedCase],
    device: torch.device,
    *,
    roi_size: int = 64,
    precision: Precision = "auto",
    on_case: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Mean Dice and HD95 (mm) of TC, WT, ET and their means over ``cases``."""
    if not cases:
        raise DataError("no validation cases to evaluate on")
    model = build_model(model_name, model_params, weights).to(device).eval()
    dtype = resolve_precision(device, precision)
    per_case = []
    for number, case in enumerate(cases, start=1):
        image = torch.from_numpy(np.array(case.image())).to(device)[None]
        image = image.to(dtype if device.type == "cuda" else torch.float32)
        with torch.inference_mode(), autocast(device, dtype):
            logits = sliding_window_inference(
                image,
                roi_size=(roi_size,) * 3,
                sw_batch_size=4 if device.type == "cuda" else 1,
                predictor=model,
                overlap=0.25,
            )
        assert isinstance(logits, torch.Tensor)
        prediction = (torch.sigmoid(logits.float()) > 0.5)[0].cpu()
        truth = torch.from_numpy(np.array(case.label())).bool()
        per_case.append(case_metrics(prediction, truth, case.spacing))
        if on_case is not None:
            on_case(number, len(cases))
    return mean_metrics(per_case)


def evaluation_roi(crop_size: int) -> int:
    """Window of sliding-window inference: at least the crop, a multiple of 16."""
    return max(crop_size, 16) + (-max(crop_size, 16) % 16)
