"""``fedseg simulate`` as a user runs it: the report, the plot, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from fedseg.simulate_procs import child_environment, fedseg_command

SMALL = [
    "--sites", "2", "--rounds", "2", "--size", "24", "--cases-per-site", "4",
    "--local-steps", "2", "--crop-size", "16", "--batch-size", "1",
    "--model-param", "init_filters=8",
]  # fmt: skip


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line mentions ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def _simulate(workdir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*fedseg_command(), "simulate", "--workdir", str(workdir), *SMALL, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_environment({"COLUMNS": "160"}),
        start_new_session=True,
    )


def test_simulate_writes_report_and_plot_and_leaves_no_process(tmp_path):
    workdir = tmp_path / "sim"
    proc = _simulate(workdir, "--baseline")
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert "Validation Dice" in out
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ui/signin\?code=\S+", out), out[:3000]
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["status"] == "completed"
    versions = report["dice_by_version"]
    assert [v["version"] for v in versions] == [0, 1, 2]
    assert versions[-1]["source"] == "final-eval"
    for entry in versions:
        assert set(entry["sites"]) == {"site-1", "site-2"}
        for scores in entry["sites"].values():
            assert set(scores) == {"tc", "wt", "et", "mean"}
            assert all(0.0 <= value <= 1.0 for value in scores.values())
        assert entry["baseline"] is not None
        assert set(entry["baseline"]["sites"]) == {"site-1", "site-2"}
    # the same initial model: the baseline and the federation start equal
    assert versions[0]["baseline"]["mean"] == versions[0]["mean"]
    assert report["baseline"]["steps_per_round"] == 2 * 2
    assert len(report["rounds"]) == 2
    for entry in report["rounds"]:
        assert entry["status"] == "closed"
        assert entry["updates"] == ["site-1", "site-2"]
        timing = entry["time"]
        assert timing["wall_s"] > 0
        parts = ("download_verify_s", "evaluate_s", "local_training_s", "seal_s", "upload_s",
                 "aggregate_sign_s", "waiting_s")  # fmt: skip
        assert all(timing[name] >= 0 for name in parts)
        assert abs(sum(timing[name] for name in parts) - timing["wall_s"]) < 1e-6 or (
            timing["waiting_s"] == 0
        )
        assert 0 <= timing["federation_overhead_fraction"] <= 1
        for site in timing["sites"].values():
            assert {"time_download", "time_evaluate", "time_train", "time_seal"} <= set(site)
    assert (workdir / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "admin-token").stat().st_mode & 0o077 == 0
    assert not _processes_mentioning(str(workdir))

    # from a finished run to the hospital's own cases: fedseg predict as printed in the docs
    predicted = subprocess.run(
        [
            *fedseg_command(), "predict", "--model", str(workdir / "final-model.tar"),
            "--server-key", str(workdir / "server-key.pem"), "--out", str(tmp_path / "pred"),
            "--roi", "16", "--json", str(workdir / "sites" / "site-1" / "data"),
        ],
        capture_output=True, text=True, timeout=240, env=child_environment({}),
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    summary = json.loads(predicted.stdout)
    assert summary["model"]["version"] == 2 and len(summary["cases"]) == 4
    assert all((tmp_path / "pred" / f"{c['case']}.nii.gz").is_file() for c in summary["cases"])


def test_ctrl_c_stops_every_process(tmp_path):
    workdir = tmp_path / "interrupted"
    proc = _simulate(workdir, "--rounds", "50", "--local-steps", "200")
    try:
        deadline = time.monotonic() + 120
        # wait until the run is under way: every client has written to its log
        while time.monotonic() < deadline:
            logs = [workdir / "logs" / f"site-{i}.log" for i in (1, 2)]
            if all(log.is_file() and log.stat().st_size > 0 for log in logs):
                break
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.5)
        time.sleep(2)
        assert len(_processes_mentioning(str(workdir))) >= 3  # server and two clients
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "Interrupted" in out
    assert "Traceback" not in out
    left = _processes_mentioning(str(workdir))
    assert not left, left
