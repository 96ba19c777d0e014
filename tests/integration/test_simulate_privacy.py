"""``fedseg simulate --privacy`` and ``--aggregation`` end to end over loopback.

ε per site per round, a budget stop, and a run that closes its rounds with a robust
strategy. Kept tiny (2 sites, 4 phantom cases each at 24³, segresnet-small with 8
filters, crops of 16, 2 local steps) so each takes well under a minute of CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from fedseg.simulate_procs import child_environment, fedseg_command

SMALL = [
    "--sites", "2", "--size", "24", "--cases-per-site", "4", "--local-steps", "2",
    "--crop-size", "16", "--batch-size", "1", "--model-param", "init_filters=8",
]  # fmt: skip
SITES = ("site-1", "site-2")


def _simulate(workdir: Path, *extra: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [*fedseg_command(), "simulate", "--workdir", str(workdir), *SMALL, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_environment({"COLUMNS": "160"}),
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def test_simulate_privacy_dp_sgd_reports_epsilon_per_site_per_round(tmp_path: Path) -> None:
    workdir = tmp_path / "dp-sgd"
    code, out = _simulate(workdir, "--rounds", "2", "--privacy", "dp_sgd")
    assert code == 0, out[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["status"] == "completed"
    assert report["privacy"]["mechanism"] == "dp_sgd"
    previous = dict.fromkeys(SITES, 0.0)
    for entry in report["rounds"]:
        assert entry["updates"] == list(SITES) and entry["declines"] == {}
        assert set(entry["epsilon"]) == set(SITES)
        for site, ledger in entry["epsilon"].items():
            assert (ledger["mechanism"], ledger["round"]) == ("dp_sgd", entry["round"])
            assert ledger["cumulative_epsilon"] > previous[site]  # non-decreasing, and spent
            assert ledger["delta"] == 1e-5 and ledger["steps"] == 2
            previous[site] = ledger["cumulative_epsilon"]
    # dp_sgd's target ε is reached at the run's last round, never passed
    assert all(0 < eps <= 8.0 + 1e-6 for eps in report["privacy"]["final_epsilon"].values())
    # the site's own ledger holds each round once, the same entries the report shows
    for site in SITES:
        ledger = json.loads(
            (workdir / "sites" / site / "state" / "privacy" / "ledger.json").read_text()
        )
        assert [e["round"] for e in ledger["entries"]] == [1, 2]
    assert "Privacy: each site's cumulative ε" in out
    assert (workdir / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_site_budget_ends_the_run_budget_exhausted_with_each_sites_reason(
    tmp_path: Path,
) -> None:
    # dp_fedavg at σ = 1 costs ε 4.73 for one round and 7.08 for two (δ = 1e-5): a budget of
    # 5.5 pays for round 1 and stops every site before round 2
    workdir = tmp_path / "budget"
    code, out = _simulate(
        workdir, "--rounds", "3", "--privacy", "dp_fedavg", "--site-max-epsilon", "5.5"
    )
    assert code == 0, out[-4000:]
    assert "budget_exhausted" in out
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["status"] == "budget_exhausted"
    first = report["rounds"][0]
    assert first["updates"] == list(SITES) and set(first["epsilon"]) == set(SITES)
    declines = report["privacy"]["declines"]
    assert {(d["round"], d["site"], d["reason"]) for d in declines} == {
        (2, site, "budget_exhausted") for site in SITES
    }
    assert all(d["cumulative_epsilon"] == pytest.approx(4.7285, rel=1e-3) for d in declines)
    assert report["privacy"]["final_epsilon"] == {
        site: pytest.approx(4.7285, rel=1e-3) for site in SITES
    }


def test_simulate_aggregation_runs_the_strategy_at_every_round_close(tmp_path: Path) -> None:
    workdir = tmp_path / "median"
    code, out = _simulate(workdir, "--rounds", "2", "--aggregation", "median")
    assert code == 0, out[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["status"] == "completed"
    assert report["run"]["config"]["aggregation"]["strategy"] == "median"
    assert [entry["updates"] for entry in report["rounds"]] == [list(SITES)] * 2
