"""The long-running server never imports torch, MONAI or Opacus (~250 MB of RSS it would keep).

A fresh interpreter imports the command line (as `fedseg server serve` does) and the
app, creates it and runs a whole round through it (tests/api/torch_free_server.py); its
``sys.modules`` must hold none of them.
Only the model worker's short-lived child process may load them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_server_runs_a_round_without_torch_or_monai() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.api.torch_free_server"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["after_imports"] == [], report["after_imports"][:10]
    assert report["after_round"] == [], report["after_round"][:10]
    assert report["versions"] == [0, 1]
