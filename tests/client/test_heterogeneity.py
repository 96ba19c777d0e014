"""Heterogeneous phantom sites: counts, styles, size mix, label shift; the default unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from client.phantoms import (
    CASE_COUNTS,
    generate_sites,
    make_phantom,
    site_plans,
    site_style,
)
from fedseg.cli import app
from fedseg.simulate import Federation, SimulationConfig
from shared.errors import InvalidInput

# sha256 of the labels of two default-style phantoms, made by the code before
# heterogeneity existed: the demo's data must not change.
TODAYS_LABELS = "e1f4d79fb34f4579918d17a7dc389f008326524cc3af06be1254c7e97f6f4b84"


def _cases(folder: Path) -> int:
    return sum(1 for entry in folder.iterdir() if entry.is_dir())


def test_default_phantoms_are_unchanged() -> None:
    digest = hashlib.sha256()
    for seed, style in [(5, 1), (6, 3)]:
        digest.update(make_phantom(24, np.random.default_rng(seed), site_style(style)).label)
    assert digest.hexdigest() == TODAYS_LABELS


def test_none_is_todays_plan() -> None:
    plans = site_plans(4, cases_per_site=6)
    assert [p.cases for p in plans] == [6] * 4
    assert [p.style for p in plans] == [site_style(i) for i in range(4)]
    assert not any(p.label_shift for p in plans)


def test_strong_differs_in_counts_styles_mix_and_labels() -> None:
    plans = site_plans(5, heterogeneity="strong")
    assert [p.cases for p in plans] == [4, 12, 30, 4, 12]
    assert [p.name for p in plans] == [f"site-{i}" for i in range(1, 6)]
    assert len({p.style.name for p in plans}) == 5
    assert len({p.style.small_tumours for p in plans}) > 1
    assert [p.label_shift for p in plans] == [False] * 4 + [True]
    assert plans[-1].style.enhancing_rate < 0.5 < plans[0].style.enhancing_rate
    assert site_plans(1, heterogeneity="strong")[0].label_shift is False
    with pytest.raises(InvalidInput):
        site_plans(3, heterogeneity="wild")  # type: ignore[arg-type]


def test_label_shift_and_size_mix_change_what_the_cases_hold() -> None:
    base = site_style(0)
    shifted = dataclasses.replace(base, enhancing_rate=0.15)
    small = dataclasses.replace(base, small_tumours=1.0)

    def stats(style: object) -> tuple[float, float]:
        enhancing, volume = 0, 0
        for seed in range(24):
            label = make_phantom(24, np.random.default_rng(seed), style).label  # type: ignore[arg-type]
            enhancing += bool((label == 4).any())
            volume += int((label > 0).sum())
        return enhancing / 24, volume / 24

    et_share, wt_volume = stats(base)
    assert stats(shifted)[0] < et_share - 0.4
    assert stats(small)[1] < 0.5 * wt_volume


def test_generate_sites_writes_each_planned_site(tmp_path: Path) -> None:
    plans = site_plans(3, heterogeneity="strong")
    folders = generate_sites(tmp_path, plans, size=16, seed=2)
    assert [_cases(folders[p.name]) for p in plans] == list(CASE_COUNTS)


def test_phantoms_command_writes_heterogeneous_sites(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sites"
    result = runner.invoke(
        app, ["phantoms", str(out), "--heterogeneity", "strong", "--size", "16", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["cases"] == sum(CASE_COUNTS)
    assert [s["cases"] for s in summary["sites"]] == list(CASE_COUNTS)
    assert [s["label_shift"] for s in summary["sites"]] == [False, False, True]
    assert [_cases(out / f"site-{i}") for i in (1, 2, 3)] == list(CASE_COUNTS)
    # today's single folder is still the default
    single = tmp_path / "one"
    result = runner.invoke(app, ["phantoms", str(single), "--cases", "2", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert _cases(single) == 2


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--heterogeneity", "strong", "--cases", "5"], "--cases"),
        (["--sites", "2", "--site-style", "lowfield"], "--site-style"),
        (["--heterogeneity", "wild"], "--heterogeneity"),
    ],
)
def test_phantoms_command_names_the_clashing_flag(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    result = CliRunner().invoke(app, ["phantoms", str(tmp_path / "x"), "--size", "16", *args])
    assert result.exit_code == 1
    assert flag in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_simulate_makes_heterogeneous_sites(tmp_path: Path) -> None:
    config = SimulationConfig(workdir=tmp_path, sites=3, size=16, heterogeneity="strong")
    federation = Federation(config)
    federation.make_data()
    assert [_cases(site.data_dir) for site in federation.sites] == list(CASE_COUNTS)
    plain = Federation(SimulationConfig(workdir=tmp_path / "plain", sites=2, size=16))
    plain.make_data()
    assert [_cases(site.data_dir) for site in plain.sites] == [8, 8]


def test_simulate_refuses_an_unknown_heterogeneity_before_starting(tmp_path: Path) -> None:
    workdir = tmp_path / "sim"
    result = CliRunner().invoke(
        app, ["simulate", "--heterogeneity", "wild", "--workdir", str(workdir)]
    )
    assert result.exit_code == 1
    assert "--heterogeneity" in result.output
    assert "Traceback" not in result.output
    assert not workdir.exists()
