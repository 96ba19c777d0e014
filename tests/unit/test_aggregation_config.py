"""The ``aggregation:`` block: defaults, refusals naming the field, secure aggregation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from shared.aggregation import (
    FedAdam,
    FedAvg,
    FedProx,
    Median,
    TrimmedMean,
    proximal_mu,
    refuse_with_secure_aggregation,
    secure_aggregation_conflict,
    secure_aggregation_on,
)
from shared.schemas import RunConfig


def _config(aggregation: Any = None, **fields: Any) -> RunConfig:
    data: dict[str, Any] = {"sites": ["a", "b"], **fields}
    if aggregation is not None:
        data["aggregation"] = aggregation
    return RunConfig.model_validate(data)


def _error(aggregation: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        _config(aggregation)
    return dict(info.value.errors()[0])


def test_default_is_todays_fedavg_by_cases() -> None:
    config = _config()
    assert config.aggregation == FedAvg()
    assert config.aggregation.weighting == "cases"
    assert config.model_dump()["aggregation"] == {
        "strategy": "fedavg",
        "weighting": "cases",
        "max_share": None,
        "norm_bound_factor": None,
    }
    assert _config({}).aggregation == FedAvg()


@pytest.mark.parametrize(
    "block",
    [
        {"strategy": "fedavg", "weighting": "equal"},
        {"strategy": "fedprox", "mu": 0.1},
        {"strategy": "fedavgm", "server_learning_rate": 1.0, "momentum": 0.5},
        {"strategy": "fedadam", "server_learning_rate": 0.02, "beta1": 0.9, "tau": 1e-4},
        {"strategy": "fedyogi", "beta2": 0.95},
        {"strategy": "trimmed_mean", "trim_fraction": 0.2},
        {"strategy": "median"},
        {"strategy": "fedavg", "weighting": "capped", "max_share": 0.4},
        {"strategy": "fedadam", "norm_bound_factor": 2.0},
    ],
)
def test_each_strategy_round_trips_through_json(block: dict[str, Any]) -> None:
    config = _config(block)
    assert config.aggregation.strategy == block["strategy"]
    assert RunConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    ("block", "loc", "kind"),
    [
        ({"strategy": "fedadam", "mu": 0.1}, ("aggregation", "fedadam", "mu"), "extra_forbidden"),
        (
            {"strategy": "median", "weighting": "equal"},
            ("aggregation", "median", "weighting"),
            "extra_forbidden",
        ),
        ({"strategy": "krum"}, ("aggregation",), "unknown_strategy"),
        (
            {"strategy": "trimmed_mean", "trim_fraction": 0.5},
            ("aggregation", "trimmed_mean", "trim_fraction"),
            "less_than",
        ),
        ({"strategy": "fedyogi", "beta1": 1.0}, ("aggregation", "fedyogi", "beta1"), "less_than"),
        ({"strategy": "fedadam", "tau": 0}, ("aggregation", "fedadam", "tau"), "greater_than"),
        ({"weighting": "capped"}, ("aggregation", "fedavg"), "value_error"),
        ({"max_share": 0.5}, ("aggregation", "fedavg"), "value_error"),
        (
            {"weighting": "capped", "max_share": 0},
            ("aggregation", "fedavg", "max_share"),
            "greater_than",
        ),
        ({"weighting": "by-vibes"}, ("aggregation", "fedavg", "weighting"), "literal_error"),
    ],
)
def test_bad_blocks_are_refused_naming_the_field(
    block: dict[str, Any], loc: tuple[str, ...], kind: str
) -> None:
    error = _error(block)
    assert error["loc"] == loc
    assert error["type"] == kind


def test_legacy_aggregator_is_read_and_nothing_else_is() -> None:
    assert _config(aggregator="fedavg").aggregation == FedAvg()
    assert "aggregator" not in _config(aggregator="fedavg").model_dump()
    for fields in ({"aggregator": "fedadam"}, {"aggregator": "fedavg", "aggregation": {}}):
        with pytest.raises(ValidationError, match="aggregation block"):
            RunConfig.model_validate({"sites": ["a"], **fields})


def test_proximal_mu_is_fedprox_only() -> None:
    assert proximal_mu(FedProx(mu=0.3)) == 0.3
    assert proximal_mu(FedAvg()) == 0.0
    assert proximal_mu(FedAdam()) == 0.0


@dataclass
class _WithSecAgg:
    """A stand-in for a run config that has the secure_aggregation field."""

    aggregation: Any
    secure_aggregation: Any


@dataclass
class _Block:
    enabled: bool


def test_secure_aggregation_refuses_what_needs_single_updates() -> None:
    for refused in (
        TrimmedMean(),
        Median(),
        FedAvg(norm_bound_factor=1.0),
        FedAvg(weighting="capped", max_share=0.5),
    ):
        reason = secure_aggregation_conflict(refused)
        assert reason is not None and "secure aggregation" in reason
        with pytest.raises(ValueError, match="secure aggregation"):
            refuse_with_secure_aggregation(_WithSecAgg(refused, True))
        with pytest.raises(ValueError, match="secure aggregation"):
            refuse_with_secure_aggregation(_WithSecAgg(refused, _Block(enabled=True)))
        refuse_with_secure_aggregation(_WithSecAgg(refused, False))
        refuse_with_secure_aggregation(_WithSecAgg(refused, _Block(enabled=False)))
        refuse_with_secure_aggregation(_WithSecAgg(refused, None))
    for allowed in (FedAvg(), FedAvg(weighting="equal"), FedProx(), FedAdam()):
        assert secure_aggregation_conflict(allowed) is None
        refuse_with_secure_aggregation(_WithSecAgg(allowed, True))


def test_run_config_without_the_secure_aggregation_field_accepts_robust() -> None:
    config = _config({"strategy": "median"})
    assert not secure_aggregation_on(config)
    assert isinstance(config.aggregation, Median)
