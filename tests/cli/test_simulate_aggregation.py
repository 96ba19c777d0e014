"""``fedseg simulate --aggregation`` and ``--sites-per-round``: into the run config, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedseg.cli import app
from fedseg.simulate import SimulationConfig
from fedseg.simulate_aggregation import STRATEGIES, parse_aggregation
from shared.aggregation import FedAvg, FedProx, TrimmedMean
from shared.errors import InvalidInput


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_strategy_name_takes_its_schema_defaults(name: str) -> None:
    assert parse_aggregation(name).strategy == name


def test_the_strategies_are_the_schemas() -> None:
    assert STRATEGIES == (
        "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "trimmed_mean", "median"
    )  # fmt: skip


def test_a_json_file_and_a_toml_file_hold_the_aggregation_block(tmp_path: Path) -> None:
    block = tmp_path / "aggregation.json"
    block.write_text(json.dumps({"strategy": "trimmed_mean", "trim_fraction": 0.2}))
    assert parse_aggregation(str(block)) == TrimmedMean(trim_fraction=0.2)
    wrapped = tmp_path / "run.toml"
    wrapped.write_text('[aggregation]\nstrategy = "fedprox"\nmu = 0.1\n')
    assert parse_aggregation(str(wrapped)) == FedProx(mu=0.1)
    assert parse_aggregation(str(_write(tmp_path / "empty.json", {}))) == FedAvg()


def _write(path: Path, block: dict) -> Path:
    path.write_text(json.dumps(block))
    return path


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"strategy": "trimmed_mean", "trim_fraction": 0.9}, "aggregation.trim_fraction"),
        ({"strategy": "fedprox", "mu": -1}, "aggregation.mu"),
        ({"strategy": "fedavg", "momentum": 0.9}, "aggregation.momentum"),
        ({"strategy": "krum"}, "aggregation"),
    ],
)
def test_a_bad_block_is_refused_naming_the_field(tmp_path: Path, block: dict, field: str) -> None:
    path = _write(tmp_path / "aggregation.json", block)
    with pytest.raises(InvalidInput, match="fix that field") as raised:
        parse_aggregation(str(path))
    assert f"{path}: {field}: " in raised.value.message


def test_the_run_config_carries_the_block_and_the_cli_refuses_a_bad_one(tmp_path: Path) -> None:
    config = SimulationConfig(workdir=tmp_path, aggregation=parse_aggregation("median"))
    assert config.run_config().aggregation.strategy == "median"
    workdir = tmp_path / "sim"
    result = CliRunner().invoke(
        app, ["simulate", "--workdir", str(workdir), "--aggregation", "krum"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 1 and "neither a strategy" in result.output
    assert not workdir.exists()


def test_sites_per_round_reaches_the_run_config_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    config = SimulationConfig(workdir=tmp_path, sites=3, sites_per_round=2)
    assert config.run_config().sites_per_round == 2
    workdir = tmp_path / "sim"
    result = CliRunner().invoke(
        app, ["simulate", "--workdir", str(workdir), "--sites", "2", "--sites-per-round", "3"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 1 and "sites_per_round" in result.output
    assert not workdir.exists()
