"""``fedseg admin runs create`` with an ``aggregation:`` block in the config file."""

from __future__ import annotations

import json

import pytest
import yaml

from shared.schemas import RunInfo

pytestmark = pytest.mark.integration  # a real server process on loopback


def test_runs_create_takes_each_strategy_from_a_file(admin, tmp_path):
    for name in ("agg-a", "agg-b"):
        created = admin("sites", "create", name, "--json")
        assert created.exit_code == 0, created.stderr
    blocks = [
        {"strategy": "fedprox", "mu": 0.05},
        {"strategy": "fedadam", "server_learning_rate": 0.02, "weighting": "equal"},
        {"strategy": "trimmed_mean", "trim_fraction": 0.25},
        {"strategy": "fedavg", "weighting": "capped", "max_share": 0.6},
    ]
    for index, block in enumerate(blocks):
        path = tmp_path / f"run-{index}.yaml"
        path.write_text(yaml.safe_dump({"sites": ["agg-a", "agg-b"], "aggregation": block}))
        result = admin("runs", "create", "-c", str(path), "--json")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        kept = RunInfo.model_validate(json.loads(result.stdout)).config.aggregation
        for field, value in block.items():  # the server runs the strategy asked for
            assert getattr(kept, field) == value, (field, kept)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"sites": ["agg-a", "agg-b"], "aggregation": {"strategy": "krum"}})
    )
    result = admin("runs", "create", "-c", str(bad), "--json")
    assert result.exit_code != 0 and "aggregation" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"sites": ["agg-a", "agg-b"], "aggregation": {}}))
    result = admin("runs", "create", "-c", str(plain), "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert RunInfo.model_validate(json.loads(result.stdout)).config.aggregation.strategy == (
        "fedavg"
    )

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"sites": ["agg-a"], "aggregation": {"strategy": "fedadam", "mu": 1}})
    )
    result = admin("runs", "create", "-c", str(bad))
    assert result.exit_code == 1
    assert "aggregation.fedadam.mu" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
