"""Training smoke test and the learning test on phantoms (CPU, small model)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from client.data import discover
from client.training import (
    METRIC_KEYS,
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


def test_smoke_three_steps_at_32(phantoms32: Path, tmp_path: Path) -> None:
    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    case = next(iter(data.cases.values()))
    assert case.image().shape[0] == 4 and case.label().shape[0] == 3
    assert case.label().dtype == np.uint8 and case.image().dtype == np.float16
    # ET within TC within WT after the label transform
    tc, wt, et = torch.from_numpy(np.array(case.label())).bool()
    assert not (et & ~tc).any() and not (tc & ~wt).any() and wt.any()
    initial = state_tensors(models.build("segresnet-small", {}, seed=0).state_dict())
    config = TrainingConfig(local_steps=3, batch_size=2, crop_size=32, learning_rate=1e-3)
    result = train("segresnet-small", {}, initial, config, data, CPU)
    assert math.isfinite(result.loss) and result.steps == 3
    train_set, val_set = data.split(config)
    assert result.num_samples == len(train_set) == 3 and len(val_set) == 1
    change = delta(result.weights, initial)
    assert sum(float(t.abs().sum()) for t in change.values()) > 0
    metrics = evaluate("segresnet-small", {}, result.weights, val_set, CPU, roi_size=32)
    assert set(metrics) == set(METRIC_KEYS)
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRIC_KEYS if k.startswith("dice"))
    assert all(0.0 <= metrics[k] <= 374.0 for k in METRIC_KEYS if k.startswith("hd95"))


def test_weights_of_another_model_are_refused() -> None:
    other = state_tensors(models.build("segresnet", {}).state_dict())
    with pytest.raises(TensorError):
        build_model("segresnet-small", {}, other)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU


@pytest.mark.slow
def test_learning_beats_the_untrained_model(phantoms48: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    # the cache in the loop: build it, then train and evaluate from a warm reload
    load_site_data(discover(phantoms48).cases, tmp_path / "cache")
    data = load_site_data(discover(phantoms48).cases, tmp_path / "cache")
    assert data.stats.reused == 10 and data.stats.built == 0
    config = TrainingConfig(
        local_steps=30, batch_size=2, crop_size=32, learning_rate=3e-3, val_fraction=0.3
    )
    _, val_set = data.split(config)
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


def test_compile_falls_back_to_eager_on_cpu_and_says_so(caplog) -> None:
    import logging

    from client.training import step_model

    model = build_model("segresnet-small", {}, None)
    caplog.set_level(logging.INFO)
    assert step_model(model, CPU, compile=True) is model
    assert any("eager on CPU" in record.message for record in caplog.records)
    assert step_model(model, CPU, compile=False) is model
    assert TrainingConfig().compile is False and TrainingConfig(compile=True).compile
