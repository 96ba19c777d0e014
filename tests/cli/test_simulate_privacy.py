"""``fedseg simulate --privacy FILE|mechanism`` and ``--site-max-epsilon``: parsed, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.privacy.policy import load_policy
from fedseg.cli import app
from fedseg.simulate import SimulationConfig, SiteHandle
from fedseg.simulate_privacy import PHANTOM_DEFAULTS, parse_privacy, simulated_policy
from shared.errors import InvalidInput
from shared.schemas import DpSgdPrivacy, PlainPrivacy, SvtPrivacy


@pytest.mark.parametrize("name", ["none", "dp_sgd", "dp_fedavg", "svt"])
def test_a_mechanism_name_takes_the_phantom_defaults(name: str) -> None:
    privacy = parse_privacy(name)
    assert privacy.mechanism == name and privacy is PHANTOM_DEFAULTS[name]


def test_a_json_file_and_a_toml_file_hold_the_privacy_block(tmp_path: Path) -> None:
    block = tmp_path / "privacy.json"
    block.write_text(json.dumps({"mechanism": "dp_sgd", "noise_multiplier": 1.1}))
    assert parse_privacy(str(block)) == DpSgdPrivacy(noise_multiplier=1.1)
    wrapped = tmp_path / "run.toml"
    wrapped.write_text('[privacy]\nmechanism = "svt"\nfraction = 0.5\nepsilon = 2.0\n')
    assert parse_privacy(str(wrapped)) == SvtPrivacy(fraction=0.5, epsilon=2.0)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert parse_privacy(str(plain)) == PlainPrivacy()


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"mechanism": "dp_sgd", "noise_multiplier": -1}, "privacy.noise_multiplier"),
        ({"mechanism": "dp_sgd", "target_epsilon": 0}, "privacy.target_epsilon"),
        ({"mechanism": "dp_fedavg", "clip_norm": 0, "noise_multiplier": 1}, "privacy.clip_norm"),
        ({"mechanism": "svt", "epsilon": 1, "fraction": 1.5}, "privacy.fraction"),
        ({"mechanism": "none", "delta": 1}, "privacy.delta"),
        ({"mechanism": "none", "noise": 1}, "privacy.noise"),
        ({"mechanism": "dp_magic"}, "privacy"),
    ],
)
def test_a_bad_block_is_refused_naming_the_field(tmp_path: Path, block: dict, field: str) -> None:
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(block))
    with pytest.raises(InvalidInput, match="fix that field") as raised:
        parse_privacy(str(path))
    assert f"{path}: {field}: " in raised.value.message


def test_neither_a_mechanism_nor_a_file_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"neither a mechanism .* nor a file"):
        parse_privacy("dp-sgd")
    broken = tmp_path / "privacy.toml"
    broken.write_text("mechanism = ")
    with pytest.raises(InvalidInput, match="is not valid TOML"):
        parse_privacy(str(broken))
    listed = tmp_path / "privacy.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="must hold an object"):
        parse_privacy(str(listed))


def test_the_cli_refuses_bad_privacy_before_starting_anything(tmp_path: Path) -> None:
    workdir = tmp_path / "sim"
    runner = CliRunner()
    result = runner.invoke(
        app, ["simulate", "--workdir", str(workdir), "--privacy", "dp_sgdd"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1 and "neither a mechanism" in result.output
    result = runner.invoke(
        app,
        ["simulate", "--workdir", str(workdir), "--privacy", "dp_sgd", "--site-max-epsilon", "-1"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1 and "--site-max-epsilon" in result.output
    assert not workdir.exists()


def test_simulated_sites_get_a_policy_that_trains_phantoms(tmp_path: Path) -> None:
    site = SiteHandle(name="site-1", index=0, data_dir=tmp_path / "d", state_dir=tmp_path / "s")
    site.write_policy(None)
    policy, source = load_policy(site.state_dir)
    assert source.endswith("privacy/policy.json")
    assert policy.min_cases == 1 and policy.allow_plain and policy.max_epsilon is None
    budget = simulated_policy(0.5)
    assert (budget.max_epsilon, budget.allow_plain, budget.min_cases) == (0.5, False, 1)


def test_the_run_config_carries_the_privacy_block(tmp_path: Path) -> None:
    config = SimulationConfig(workdir=tmp_path, privacy=parse_privacy("dp_sgd"))
    assert config.run_config().privacy == PHANTOM_DEFAULTS["dp_sgd"]
