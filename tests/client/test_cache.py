"""The preprocessed-case cache: built once, reused without reading NIfTI, rebuilt when stale."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from client.data import discover
from client.data.cache import CaseCache, load_cases
from client.data.preprocess import preprocess_case
from client.phantoms import generate


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    generate(out, cases=3, size=24, seed=5, style=0)
    return out


@pytest.fixture
def nifti_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every NIfTI file nibabel opens (MONAI's reader and the checks go through it)."""
    seen: list[str] = []
    real = nib.load

    def counting(filename, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(str(filename))
        return real(filename, *args, **kwargs)

    monkeypatch.setattr(nib, "load", counting)
    return seen


def test_a_second_start_reads_no_nifti(dataset: Path, tmp_path: Path, nifti_loads) -> None:
    cases = discover(dataset).cases
    first, stats = load_cases(cases, tmp_path / "cache")
    assert stats.built == 3 and stats.reused == 0
    assert len(nifti_loads) == 3 * 5  # each source read exactly once
    nifti_loads.clear()
    again, stats = load_cases(discover(dataset).cases, tmp_path / "cache")
    assert stats.built == 0 and stats.reused == 3
    assert nifti_loads == []
    for old, new in zip(first, again, strict=True):
        assert np.array_equal(old.image(), new.image())
        assert np.array_equal(old.positive, new.positive)


def test_the_cache_holds_the_pipeline_output(dataset: Path, tmp_path: Path) -> None:
    case = discover(dataset).cases[0]
    (entry,), _ = load_cases([case], tmp_path / "cache")
    fresh = preprocess_case(case)
    assert entry.image().dtype == np.float16 and entry.label().dtype == np.uint8
    assert np.allclose(entry.image(), fresh.image, atol=1e-2, rtol=1e-3)
    assert np.array_equal(entry.label(), fresh.label)
    assert entry.spacing == fresh.spacing and entry.shape == fresh.image.shape[1:]
    assert len(entry.positive) and (entry.label()[1][tuple(entry.positive.T)] == 1).all()


def test_a_changed_source_is_read_again(dataset: Path, tmp_path: Path, nifti_loads) -> None:
    cases = discover(dataset).cases
    before, _ = load_cases(cases, tmp_path / "cache")
    old_flair = np.array(before[1].image()[3])
    flair = cases[1].images[3]
    assert flair is not None
    image = nib.load(str(flair))
    data = np.asanyarray(image.dataobj)
    data = data * np.linspace(0.5, 2.0, data.shape[0])[:, None, None]  # a different contrast
    nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine), str(flair))
    nifti_loads.clear()
    after, stats = load_cases(cases, tmp_path / "cache")
    assert stats.built == 1 and stats.reused == 2
    assert {Path(p).parent.name for p in nifti_loads} == {cases[1].case_id}
    assert not np.array_equal(old_flair, after[1].image()[3])


def test_a_touched_but_unchanged_source_is_reused(dataset: Path, tmp_path: Path) -> None:
    cases = discover(dataset).cases
    load_cases(cases, tmp_path / "cache")
    label = cases[0].label
    assert label is not None
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    _, stats = load_cases(cases, tmp_path / "cache")
    assert stats.built == 0  # same size, same sha256: only the mtime moved


@pytest.mark.parametrize("name", ["image.npy", "label.npy", "meta.json"])
def test_a_torn_entry_is_rebuilt_never_used(dataset: Path, tmp_path: Path, name: str) -> None:
    cases = discover(dataset).cases
    cache = CaseCache(tmp_path / "cache")
    (whole,), _ = load_cases(cases[:1], tmp_path / "cache")
    reference = np.array(whole.image())
    torn = cache.folder(cases[0]) / name
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    assert cache.lookup(cases[0]) is None  # never handed out
    (rebuilt,), stats = load_cases(cases[:1], tmp_path / "cache")
    assert stats.built == 1
    assert np.array_equal(np.array(rebuilt.image()), reference)


def test_nothing_half_written_is_left_behind(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import client.data.cache as cache_module

    cases = discover(dataset).cases

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", boom)
    with pytest.raises(OSError):
        load_cases(cases[:1], tmp_path / "cache")
    root = CaseCache(tmp_path / "cache").root
    assert list(root.iterdir()) == []


def test_intake_reads_each_file_once_cold_and_none_warm(
    dataset: Path, tmp_path: Path, nifti_loads
) -> None:
    """The agent's start: checks and preprocessing share one read; a warm start reads none."""
    from client.data.intake import intake

    cached, report, stats = intake(dataset, tmp_path / "cache")
    assert stats.built == 3 and report.valid_cases == 3
    assert sorted(nifti_loads) == sorted(set(nifti_loads)) and len(nifti_loads) == 15
    nifti_loads.clear()
    again, report, stats = intake(dataset, tmp_path / "cache")
    assert stats.reused == 3 and nifti_loads == [] and report.valid_cases == 3
    assert [c.case_id for c in again] == [c.case_id for c in cached]


def test_intake_never_uses_a_duplicate_or_broken_case(tmp_path: Path) -> None:
    from client.data.intake import intake
    from tests.client.test_data import brats_case, break_case

    brats_case(tmp_path / "HGG", "Brats18_X_1")
    brats_case(tmp_path / "LGG", "Brats18_X_1")  # the same id twice: neither is used
    brats_case(tmp_path / "HGG", "Brats18_Y_1")
    brats_case(tmp_path / "HGG", "Brats18_Z_1")
    break_case(brats_case(tmp_path / "LGG", "Brats18_T_1"), "truncated")
    cached, report, _ = intake(tmp_path, tmp_path / "cache")
    assert sorted(c.case_id for c in cached) == ["Brats18_Y_1", "Brats18_Z_1"]
    invalid = sorted(r.case_id for r in report.cases if not r.valid)
    assert invalid == ["Brats18_T_1", "Brats18_X_1", "Brats18_X_1"]
