"""Training smoke test and the learning test on phantoms (CPU, small model)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from client.data import discover
from client.training import (
    build_model,
    evaluate,
    evaluation_roi,
    load_site_data,
    resolve_device,
    train,
)
from shared import models
from shared.errors import TensorError
from shared.schemas import TrainingConfig
from shared.tensors import delta, state_tensors

CPU = torch.device("cpu")


def test_smoke_three_steps_at_32(phantoms32: Path) -> None:
    data = load_site_data(discover(phantoms32).cases)
    volume = next(iter(data.volumes.values()))
    assert volume.image.shape[0] == 4 and volume.label.shape[0] == 3
    assert volume.label.dtype == torch.uint8
    # ET within TC within WT after the label transform
    tc, wt, et = volume.label.bool()
    assert not (et & ~tc).any() and not (tc & ~wt).any() and wt.any()
    initial = state_tensors(models.build("segresnet-small", {}, seed=0).state_dict())
    config = TrainingConfig(local_steps=3, batch_size=2, crop_size=32, learning_rate=1e-3)
    result = train("segresnet-small", {}, initial, config, data, CPU)
    assert math.isfinite(result.loss) and result.steps == 3
    train_set, val_set = data.split(config.val_fraction, config.seed, config.max_val_cases)
    assert result.num_samples == len(train_set) == 3 and len(val_set) == 1
    change = delta(result.weights, initial)
    assert sum(float(t.abs().sum()) for t in change.values()) > 0
    metrics = evaluate("segresnet-small", {}, result.weights, val_set, CPU, roi_size=32)
    assert set(metrics) == {"dice_tc", "dice_wt", "dice_et", "dice_mean"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_weights_of_another_model_are_refused() -> None:
    other = state_tensors(models.build("segresnet", {}).state_dict())
    with pytest.raises(TensorError):
        build_model("segresnet-small", {}, other)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU


@pytest.mark.slow
def test_learning_beats_the_untrained_model(phantoms48: Path) -> None:
    started = time.perf_counter()
    data = load_site_data(discover(phantoms48).cases)
    config = TrainingConfig(
        local_steps=30, batch_size=2, crop_size=32, learning_rate=3e-3, val_fraction=0.3
    )
    _, val_set = data.split(config.val_fraction, config.seed, config.max_val_cases)
    roi = evaluation_roi(config.crop_size)
    initial = state_tensors(models.build("segresnet-small", {}, seed=0).state_dict())
    before = evaluate("segresnet-small", {}, initial, val_set, CPU, roi_size=roi)
    result = train("segresnet-small", {}, initial, config, data, CPU)
    after = evaluate("segresnet-small", {}, result.weights, val_set, CPU, roi_size=roi)
    print(
        f"WT Dice {before['dice_wt']:.3f} -> {after['dice_wt']:.3f} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    assert after["dice_wt"] > before["dice_wt"] + 0.25
    assert after["dice_wt"] > 0.4
