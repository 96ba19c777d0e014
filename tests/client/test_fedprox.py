"""FedProx at the site: the term's value and gradient, mu = 0 is FedAvg, mu > 0 drifts less."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.data import discover
from client.fedprox import proximal_term
from client.training import load_site_data, train
from shared import models
from shared.errors import ConfigError
from shared.schemas import TrainingConfig
from shared.tensors import state_tensors

CPU = torch.device("cpu")
TINY: dict[str, object] = {"blocks_down": [1], "blocks_up": []}


def test_term_is_zero_at_the_anchor_and_its_gradient_is_mu_times_the_drift() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    term = proximal_term(model, 0.5)
    assert term is not None
    assert float(term(model).detach()) == 0.0
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    value = term(model)
    drift = sum(
        float((p.detach() - s).pow(2).sum()) for p, s in zip(model.parameters(), start, strict=True)
    )
    assert float(value.detach()) == pytest.approx(0.25 * drift, rel=1e-5)
    value.backward()
    for param, anchor in zip(model.parameters(), start, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, 0.5 * (param.detach() - anchor))


def test_mu_zero_has_no_term_and_negative_mu_is_refused() -> None:
    model = torch.nn.Linear(2, 2)
    assert proximal_term(model, 0.0) is None
    with pytest.raises(ConfigError):
        proximal_term(model, -1.0)
    with pytest.raises(ConfigError):
        proximal_term(model, float("nan"))


def _drift(weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> float:
    return sum(
        float((weights[name].float() - initial[name].float()).pow(2).sum())
        for name in initial
        if initial[name].is_floating_point()
    )


def test_mu_zero_is_fedavgs_step_and_mu_above_zero_moves_less(
    phantoms32: Path, tmp_path: Path
) -> None:
    data = load_site_data(discover(phantoms32).cases, tmp_path / "cache")
    initial = state_tensors(models.build("segresnet-small", TINY, seed=0).state_dict())
    config = TrainingConfig(local_steps=3, batch_size=1, crop_size=16, learning_rate=1e-2)
    plain = train("segresnet-small", TINY, initial, config, data, CPU)
    zero = train("segresnet-small", TINY, initial, config, data, CPU, proximal_mu=0.0)
    for name, tensor in plain.weights.items():
        assert torch.equal(tensor, zero.weights[name]), name
    assert zero.loss == plain.loss
    strong = train("segresnet-small", TINY, initial, config, data, CPU, proximal_mu=100.0)
    assert _drift(strong.weights, initial) < 0.5 * _drift(plain.weights, initial)
