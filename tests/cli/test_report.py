"""The simulation report's arithmetic: Dice per model version and the round time split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedseg.report import (
    build_report,
    dice_by_version,
    dice_table,
    hd95_table,
    plot_dice,
    round_timing,
)
from shared.schemas import RoundInfo, RunConfig, RunInfo, SiteProgress

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _scores(mean: float) -> dict[str, float]:
    return {"dice_tc": mean - 0.1, "dice_wt": mean + 0.1, "dice_et": mean, "dice_mean": mean}


def _run(rounds: int = 2) -> RunInfo:
    return RunInfo(
        id="r1",
        name="sim",
        status="completed",
        config=RunConfig(sites=["a", "b"], rounds=rounds),
        current_round=None,
        created_at=T0,
    )


def _round(number: int, a: float, b: float) -> RoundInfo:
    return RoundInfo(
        run_id="r1",
        round=number,
        status="closed",
        opened_at=T0 + timedelta(seconds=100 * number),
        deadline=None,
        closed_at=T0 + timedelta(seconds=100 * number + 50),
        weights_sha256=None,
        sites=[
            SiteProgress(site="a", state="uploaded", metrics=_scores(a)),
            SiteProgress(site="b", state="uploaded", metrics=_scores(b)),
        ],
    )


def test_version_v_is_what_the_sites_evaluated_in_round_v_plus_1():
    rounds = [_round(1, 0.2, 0.4), _round(2, 0.5, 0.7)]
    final = {"a": _scores(0.8), "b": _scores(0.6)}
    baseline = [{"a": _scores(0.3), "b": _scores(0.3)}] * 3
    versions = dice_by_version(_run(), rounds, final, baseline)
    assert [v["version"] for v in versions] == [0, 1, 2]
    assert [v["source"] for v in versions] == ["sites", "sites", "final-eval"]
    assert versions[0]["mean"]["mean"] == pytest.approx(0.3)
    assert versions[1]["mean"]["mean"] == pytest.approx(0.6)
    assert versions[2]["mean"]["mean"] == pytest.approx(0.7)
    assert versions[1]["sites"]["a"] == pytest.approx(
        {"tc": 0.4, "wt": 0.6, "et": 0.5, "mean": 0.5}
    )
    assert versions[2]["baseline"]["mean"]["mean"] == pytest.approx(0.3)


def test_round_time_follows_the_last_update_to_arrive():
    info = _round(1, 0.2, 0.4)  # open 100 s .. 150 s
    header = {
        "created_at": (T0 + timedelta(seconds=140)).isoformat(),
        "num_samples": 3,
        "metrics": {"time_download": 0.5, "time_evaluate": 4.0, "time_train": 30.0,
                    "time_seal": 0.1, "train_loss": 0.7},
    }  # fmt: skip
    early = {**header, "created_at": (T0 + timedelta(seconds=120)).isoformat()}
    receipts = {
        "a": {"received_at": (T0 + timedelta(seconds=141)).isoformat()},
        "b": {"received_at": (T0 + timedelta(seconds=121)).isoformat()},
    }
    timing = round_timing(info, {"a": header, "b": early}, receipts)
    assert timing["critical_site"] == "a"
    assert timing["wall_s"] == pytest.approx(50)
    assert timing["upload_s"] == pytest.approx(1.0)
    assert timing["aggregate_sign_s"] == pytest.approx(9.0)
    assert timing["local_training_s"] == 30.0
    overhead = 0.5 + 0.1 + 1.0 + 9.0
    assert timing["federation_overhead_s"] == pytest.approx(overhead)
    assert timing["federation_overhead_fraction"] == pytest.approx(overhead / 50)
    assert timing["waiting_s"] == pytest.approx(50 - overhead - 30 - 4)


def test_report_table_and_plot(tmp_path):
    run = _run()
    rounds = [_round(1, 0.2, 0.4), _round(2, 0.5, 0.7)]
    report = build_report(
        run=run,
        rounds=rounds,
        headers={},
        receipts={},
        final_eval={"a": _scores(0.8), "b": _scores(0.6)},
        baseline=None,
        baseline_steps_per_round=None,
        phases={"total": 1.0},
        settings={"sites": 2},
    )
    assert len(report["rounds"]) == 2 and report["baseline"] is None
    assert dice_table(report).row_count == 3
    plot_dice(report, tmp_path / "dice.png")
    assert (tmp_path / "dice.png").read_bytes()[:4] == b"\x89PNG"


def test_hd95_goes_into_the_report_and_its_table():
    def scored(mean: float, hd: float) -> dict[str, float]:
        return {
            **_scores(mean),
            "hd95_tc": hd,
            "hd95_wt": hd / 2,
            "hd95_et": 374.0,
            "hd95_mean": (hd + hd / 2 + 374.0) / 3,
        }

    rounds = [_round(1, 0.2, 0.4)]
    rounds[0] = rounds[0].model_copy(
        update={
            "sites": [
                SiteProgress(site="a", state="uploaded", metrics=scored(0.2, 20.0)),
                SiteProgress(site="b", state="uploaded", metrics=scored(0.4, 10.0)),
            ]
        }
    )
    report = build_report(
        run=_run(rounds=1),
        rounds=rounds,
        headers={},
        receipts={},
        final_eval={"a": scored(0.8, 4.0), "b": scored(0.6, 8.0)},
        baseline=None,
        baseline_steps_per_round=None,
        phases={"total": 1.0},
        settings={},
    )
    versions = report["hd95_by_version"]
    assert [v["source"] for v in versions] == ["sites", "final-eval"]
    assert versions[0]["sites"]["a"]["tc"] == 20.0 and versions[0]["mean"]["et"] == 374.0
    assert versions[1]["mean"]["tc"] == pytest.approx(6.0)
    assert hd95_table(report).row_count == 2
