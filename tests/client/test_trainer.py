"""The agent's trainer: evaluation every ``eval_every`` rounds on ``eval_max_cases`` cases."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

import client.trainer as trainer_module
from client.data import discover
from client.trainer import LocalTrainer
from client.training import load_site_data
from shared.schemas import Task, TrainingConfig

CPU = torch.device("cpu")


def task(round_number: int, **training: object) -> Task:
    return Task(
        run_id="run1",
        round=round_number,
        site="site-a",
        model="segresnet-small",
        model_params={},
        weights_sha256="0" * 64,
        bundle_path="/b",
        upload_path="/u",
        round_public_key="AAAA",
        deadline=datetime.now(UTC) + timedelta(hours=1),
        training=TrainingConfig.model_validate(training),
        issued_at=datetime.now(UTC),
    )


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The case ids each evaluation scored (the metric itself is tested elsewhere)."""
    calls: list[list[str]] = []

    def fake_evaluate(model, params, weights, cases, device, **kwargs):  # type: ignore[no-untyped-def]
        calls.append([c.case_id for c in cases])
        return {"dice_mean": 0.5, "hd95_mean": 10.0}

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    return calls


def test_evaluation_every_n_rounds_on_at_most_n_cases(
    phantoms32: Path, tmp_path: Path, scored, caplog
) -> None:
    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    local = LocalTrainer(data, CPU)
    config = {"val_fraction": 0.5, "eval_every": 2, "eval_max_cases": 1}
    caplog.set_level(logging.INFO, logger="client.progress")
    assert local.evaluate(task(1, **config), {}) == {"dice_mean": 0.5, "hd95_mean": 10.0}
    assert local.evaluate(task(2, **config), {}) == {}  # skipped round
    assert local.evaluate(task(3, **config), {}) != {}
    assert [len(ids) for ids in scored] == [1, 1]
    assert scored[0] == scored[1]  # the same case each time
    local.evaluate_all(task(3, **config), {})
    assert len(scored[-1]) == 2  # the final model: every validation case
    assert any("split (seeded hash): 2 training, 2 validation" in r.message for r in caplog.records)
    assert any("evaluation skipped (eval_every=2)" in r.message for r in caplog.records)


def test_training_logs_rate_and_eta(phantoms32: Path, tmp_path: Path, caplog) -> None:
    from shared import models
    from shared.tensors import state_tensors

    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    caplog.set_level(logging.INFO, logger="client.progress")
    weights = state_tensors(models.build("segresnet-small", {}, seed=0).state_dict())
    result = LocalTrainer(data, CPU).train(
        task(1, local_steps=4, crop_size=16, batch_size=1), weights
    )
    assert result.steps == 4 and result.num_samples == 3
    lines = [r.message for r in caplog.records if "steps/s" in r.message]
    assert lines and "step 4/4 (100%)" in lines[-1] and "left" in lines[-1]


def test_the_step_meter_reads_the_loss_only_when_it_logs_and_drives_a_bar_on_a_terminal(
    caplog,
) -> None:
    import io

    from rich.console import Console

    from client import progress

    class Loss:
        reads = 0

        def __float__(self) -> float:
            Loss.reads += 1
            return 0.5

    screen = io.StringIO()
    progress.show_bars(Console(file=screen, force_terminal=True, width=80))
    try:
        caplog.set_level(logging.INFO, logger="client.progress")
        meter = progress.StepMeter("round 1: training", 20)
        for step in range(1, 21):
            meter(step, 20, Loss())
    finally:
        progress.show_bars(None)
    assert Loss.reads == len(caplog.records) == 10  # one read per logged line, not per step
    assert "round 1: training" in screen.getvalue()  # the bar was drawn


def test_the_trainer_counts_training_cases_and_hands_dp_sgd_to_training(
    phantoms32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.privacy.dp_sgd import DpSgdPlan

    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    local = LocalTrainer(data, CPU)
    config = task(1, val_fraction=0.25)
    assert local.train_cases(config) == len(data.split(config.training)[0]) == 3
    seen: list[object] = []

    def fake_train(*args: object, dp_sgd: object = None, **kwargs: object) -> str:
        seen.append(dp_sgd)
        return "trained"

    monkeypatch.setattr(trainer_module, "train", fake_train)
    plan = DpSgdPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5)
    local.train(config, {}, dp_sgd=plan)
    local.train(config, {})
    assert seen == [plan, None]


def test_the_trainer_hands_the_tasks_fedprox_mu_to_training(
    phantoms32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FedProx task's mu reaches `train`, and a plain task trains without the term."""
    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    local = LocalTrainer(data, CPU)
    seen: list[object] = []

    def fake_train(*args: object, proximal_mu: float = 0.0, **kwargs: object) -> str:
        seen.append(proximal_mu)
        return "trained"

    monkeypatch.setattr(trainer_module, "train", fake_train)
    local.train(task(1).model_copy(update={"proximal_mu": 0.05}), {})
    local.train(task(1), {})
    assert seen == [0.05, 0.0]


def test_a_fedprox_task_trains_closer_to_the_global_model(phantoms32: Path, tmp_path: Path) -> None:
    """End to end through the trainer: mu > 0 pulls the local weights to the received ones."""
    from shared import models
    from shared.tensors import state_tensors

    tiny = {"blocks_down": [1], "blocks_up": []}
    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    initial = state_tensors(models.build("segresnet-small", tiny, seed=0).state_dict())
    plain_task = task(1, local_steps=3, batch_size=1, crop_size=16, learning_rate=1e-2)
    plain_task = plain_task.model_copy(update={"model_params": tiny})
    prox_task = plain_task.model_copy(update={"proximal_mu": 100.0})
    local = LocalTrainer(data, CPU)

    def drift(weights: dict[str, torch.Tensor]) -> float:
        return sum(
            float((weights[name].float() - initial[name].float()).pow(2).sum())
            for name in initial
            if initial[name].is_floating_point()
        )

    plain = local.train(plain_task, initial)
    prox = local.train(prox_task, initial)
    assert drift(prox.weights) < 0.5 * drift(plain.weights)


def test_fedprox_with_dp_sgd_is_refused_rather_than_trained_without_the_term(
    phantoms32: Path, tmp_path: Path
) -> None:
    from client.privacy.dp_sgd import DpSgdPlan
    from shared.errors import ConfigError

    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    plan = DpSgdPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5)
    fedprox = task(1, local_steps=1, crop_size=16).model_copy(update={"proximal_mu": 0.1})
    with pytest.raises(ConfigError, match="proximal"):
        LocalTrainer(data, CPU).train(fedprox, {}, dp_sgd=plan)
