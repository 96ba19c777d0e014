"""``fedseg client policy show|set``: the site's privacy policy from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.privacy.accountant import Spend
from client.privacy.ledger import EpsilonLedger
from client.privacy.policy import SitePolicy, load_policy
from fedseg.cli import app

runner = CliRunner()


def policy(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["client", "policy", *args])
    return result.exit_code, result.output


def test_set_then_show_round_trips_through_the_state_dir(tmp_path: Path) -> None:
    code, _ = policy(
        "set", "--state-dir", str(tmp_path), "--max-epsilon", "8", "--mechanisms", "dp_sgd,svt"
    )
    assert code == 0
    loaded, source = load_policy(tmp_path)
    assert source.endswith("policy.json")
    assert loaded == SitePolicy(max_epsilon=8, mechanisms=("dp_sgd", "svt"), allow_plain=False)
    code, _ = policy("set", "--state-dir", str(tmp_path), "--min-batch", "4")
    assert code == 0
    assert load_policy(tmp_path)[0].max_epsilon == 8  # other fields kept
    spend = Spend(mechanism="svt", pure_epsilon=0.5, steps=1)
    EpsilonLedger(tmp_path).record("run-1", 1, spend, delta=1e-5)
    code, out = policy("show", "--state-dir", str(tmp_path), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["policy"]["min_batch"] == 4
    assert shown["spent_epsilon"] == pytest.approx(0.5)
    assert shown["runs"]["run-1"]["rounds"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delta", "1"], "--delta"),
        (["--max-epsilon", "-1"], "--max-epsilon"),
        (["--mechanisms", "dp_sgd,magic"], "--mechanisms"),
        (["--min-cases", "0"], "--min-cases"),
        (["--max-epsilon", "8", "--allow-plain"], "cannot allow plain rounds"),
    ],
)
def test_a_bad_setting_names_the_flag_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out = policy("set", "--state-dir", str(tmp_path), *args)
    assert code == 2
    assert message in out
    assert "Traceback" not in out
    assert not (tmp_path / "privacy" / "policy.json").exists()


def test_the_environment_wins_in_a_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "policy-secret.json"
    secret.write_text(json.dumps({"min_cases": 20, "allow_plain": False, "max_epsilon": 3}))
    monkeypatch.setenv("FEDSEG_PRIVACY_POLICY_FILE", str(secret))
    code, out = policy("show", "--state-dir", str(tmp_path), "--json")
    assert code == 0
    assert json.loads(out)["source"] == "FEDSEG_PRIVACY_POLICY_FILE"
    assert json.loads(out)["policy"]["min_cases"] == 20
    monkeypatch.delenv("FEDSEG_PRIVACY_POLICY_FILE")
    monkeypatch.setenv("FEDSEG_PRIVACY_POLICY", '{"min_cases": 0}')
    code, out = policy("show", "--state-dir", str(tmp_path))
    assert code == 1
    assert "FEDSEG_PRIVACY_POLICY" in out and "min_cases" in out and "Traceback" not in out


def test_show_needs_a_state_dir() -> None:
    code, out = policy("show")
    assert code == 2 and "--state-dir" in out


def test_a_missing_policy_secret_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSEG_PRIVACY_POLICY_FILE", str(tmp_path / "absent.json"))
    code, out = policy("show", "--state-dir", str(tmp_path))
    assert code == 1
    assert "FEDSEG_PRIVACY_POLICY_FILE" in out and "mount" in out and "Traceback" not in out
