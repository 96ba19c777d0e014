"""The report's privacy part: ε per site per round, declines, and the Dice-against-ε panel."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest

from fedseg.report import build_report, cumulative_epsilon, epsilon_table, plot_dice
from shared.schemas import DpFedAvgPrivacy, RoundInfo, RunConfig, RunInfo, SiteProgress
from tests.cli.test_report import _round, _scores

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _entry(round_number: int, cumulative: float) -> dict[str, object]:
    return {
        "run_id": "r1",
        "round": round_number,
        "mechanism": "dp_fedavg",
        "accountant": "rdp",
        "epsilon": 1.0,
        "cumulative_epsilon": cumulative,
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "clip": 1.0,
        "sample_rate": 1.0,
        "steps": 1,
    }


def _private_run() -> RunInfo:
    config = RunConfig(
        sites=["a", "b"], rounds=2, privacy=DpFedAvgPrivacy(clip_norm=1.0, noise_multiplier=1.0)
    )
    return RunInfo(
        id="r1",
        name="sim",
        status="budget_exhausted",
        config=config,
        current_round=2,
        created_at=T0,
    )


def _report(run: RunInfo, rounds: list[RoundInfo]) -> dict:
    return build_report(
        run=run,
        rounds=rounds,
        headers={1: {"a": {"privacy": _entry(1, 1.5)}, "b": {"privacy": _entry(1, 1.5)}}},
        receipts={},
        final_eval=None,
        baseline=None,
        baseline_steps_per_round=None,
        phases={},
        settings={},
        declines={
            2: {"a": {"reason": "budget_exhausted", "message": "over", "cumulative_epsilon": 1.5}}
        },
    )


def _second_round() -> RoundInfo:
    return RoundInfo(
        run_id="r1",
        round=2,
        status="failed",
        opened_at=T0 + timedelta(seconds=200),
        deadline=None,
        closed_at=T0 + timedelta(seconds=250),
        weights_sha256=None,
        sites=[
            SiteProgress(site="a", state="declined", metrics=_scores(0.5)),
            SiteProgress(
                site="b", state="declined", decline_reason="budget_exhausted", message="b is out"
            ),
        ],
    )


def test_epsilon_per_site_per_round_and_every_decline_with_its_reason() -> None:
    report = _report(_private_run(), [_round(1, 0.2, 0.4), _second_round()])
    first, second = report["rounds"]
    assert first["epsilon"]["a"]["cumulative_epsilon"] == 1.5 and set(first["epsilon"]) == {
        "a",
        "b",
    }
    assert second["epsilon"] == {}
    assert second["declines"]["a"]["reason"] == "budget_exhausted"  # the site's own record
    assert second["declines"]["b"] == {  # what the server recorded fills in
        "reason": "budget_exhausted",
        "message": "b is out",
        "cumulative_epsilon": None,
    }
    privacy = report["privacy"]
    assert privacy["mechanism"] == "dp_fedavg" and privacy["final_epsilon"] == {"a": 1.5, "b": 1.5}
    assert [(d["round"], d["site"]) for d in privacy["declines"]] == [(2, "a"), (2, "b")]
    assert [v["epsilon"] for v in report["dice_by_version"]] == [{}, {"a": 1.5, "b": 1.5}]
    assert epsilon_table(report).row_count == 2


def test_cumulative_epsilon_keeps_a_sites_figure_through_a_round_it_declined() -> None:
    rounds = [
        {"round": 1, "epsilon": {"a": {"cumulative_epsilon": 1.0}}},
        {"round": 2, "epsilon": {}},
        {"round": 3, "epsilon": {"a": {"cumulative_epsilon": 2.5}}},
    ]
    assert cumulative_epsilon(rounds) == {0: {}, 1: {"a": 1.0}, 2: {"a": 1.0}, 3: {"a": 2.5}}


def _png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


@pytest.mark.parametrize("private", [False, True])
def test_dice_png_gets_a_dice_against_epsilon_panel_only_with_a_mechanism(tmp_path, private):
    from tests.cli.test_report import _run

    run = _private_run() if private else _run()
    report = _report(run, [_round(1, 0.2, 0.4), _round(2, 0.5, 0.7)])
    path = tmp_path / "dice.png"
    plot_dice(report, path)
    assert _png_width(path) == (1815 if private else 1210)  # three panels, or two, at 110 dpi
