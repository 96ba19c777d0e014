"""Checks: every problem of every case, found in one pass over one discovery.

`check_dataset` discovers once and keeps each `Case` next to its report, so what
is trained on is exactly what was checked: a case is usable only when its own
report is clean. A case id seen twice flags every copy (neither can be told
apart from the other once volumes are keyed by id), so neither is used.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from client.data.layouts import MODALITIES, Case, Layout, discover
from shared.errors import DataError


@dataclass(slots=True)
class CaseReport:
    """What is wrong with one case (``problems``) and what merely looks odd (``warnings``)."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    case: Case | None = None

    @property
    def valid(self) -> bool:
        """A case is usable for training when it has no problems."""
        return not self.problems


@dataclass(slots=True)
class DataReport:
    """The result of `check_dataset`: one report per case and the verdict."""

    root: Path
    layout: Layout | None
    min_cases: int
    cases: list[CaseReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def valid_cases(self) -> int:
        """Number of cases without problems."""
        return sum(report.valid for report in self.cases)

    @property
    def usable(self) -> list[Case]:
        """The checked cases without problems, in discovery order (never re-discovered)."""
        return [r.case for r in self.cases if r.valid and r.case is not None]

    @property
    def ok(self) -> bool:
        """Enough valid cases to train, and the dataset itself is readable."""
        return not self.problems and self.valid_cases >= self.min_cases

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``--json``."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "min_cases": self.min_cases,
            "total_cases": len(self.cases),
            "valid_cases": self.valid_cases,
            "ok": self.ok,
            "problems": self.problems,
            "cases": [
                {
                    "case_id": r.case_id,
                    "valid": r.valid,
                    "shape": list(r.shape) if r.shape else None,
                    "problems": r.problems,
                    "warnings": r.warnings,
                }
                for r in self.cases
            ],
        }


@dataclass(frozen=True, slots=True)
class _Volume:
    data: np.ndarray
    affine: np.ndarray


def _load(path: Path) -> _Volume:
    import nibabel as nib  # local: importing nibabel costs ~0.2 s

    image: Any = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    return _Volume(data=data, affine=np.asarray(image.affine, dtype=np.float64))


def _try_load(path: Path, name: str, report: CaseReport) -> _Volume | None:
    try:
        return _load(path)
    except (OSError, EOFError, ValueError, zlib.error, MemoryError) as exc:
        report.problems.append(f"{name}: unreadable or truncated file ({type(exc).__name__})")
    except Exception as exc:  # nibabel raises many types for damaged files; one must not stop all
        report.problems.append(f"{name}: unreadable file ({type(exc).__name__}: {exc})")
    return None


@dataclass(frozen=True, slots=True)
class LoadedCase:
    """A case that passed its checks, with the voxels the check read (read once, used twice).

    ``images`` are in canonical order (t1, t1ce, t2, flair), as stored (3-D each).
    """

    case: Case
    images: tuple[np.ndarray, ...]
    affine: np.ndarray
    label: np.ndarray


def check_case(case: Case) -> CaseReport:
    """Every problem of one case; never raises for a damaged file."""
    return read_case(case)[0]


def read_case(case: Case, *, labelled: bool = True) -> tuple[CaseReport, LoadedCase | None]:
    """Read every file of ``case`` once, check it, and keep the voxels when it is clean.

    ``labelled=False`` (inference on a new case) accepts a case without a label and
    hands over an all-background one.
    """
    report = CaseReport(case.case_id, case=case)
    volumes: dict[str, _Volume] = {}
    if case.is_4d:
        path = case.images[0]
        assert path is not None
        if not path.is_file():
            report.problems.append(f"image: missing file {path.name}")
        else:
            volume = _try_load(path, "image", report)
            if volume is not None:
                if volume.data.ndim != 4 or volume.data.shape[-1] < 4:
                    report.problems.append(
                        f"image: expected a 4-D image with 4 channels, got shape "
                        f"{list(volume.data.shape)}"
                    )
                else:
                    for k, modality in enumerate(MODALITIES):
                        channel = volume.data[..., case.channel_index[k]]
                        volumes[modality] = _Volume(channel, volume.affine)
    else:
        for modality, maybe_path in zip(MODALITIES, case.images, strict=True):
            if maybe_path is None:
                report.problems.append(f"{modality}: missing modality")
            elif not maybe_path.is_file():
                report.problems.append(f"{modality}: missing file {maybe_path.name}")
            else:
                volume = _try_load(maybe_path, modality, report)
                if volume is not None:
                    volumes[modality] = volume
    label: _Volume | None = None
    if case.label is None:
        if labelled:
            report.problems.append("label: missing segmentation")
    elif not case.label.is_file():
        report.problems.append(f"label: missing file {case.label.name}")
    else:
        label = _try_load(case.label, "label", report)
    _check_volumes(case, volumes, label, report)
    if not report.valid or (label is None and labelled):
        return report, None
    images = tuple(np.asarray(volumes[m].data) for m in MODALITIES)
    loaded = LoadedCase(
        case=case,
        images=images,
        affine=volumes[MODALITIES[0]].affine,
        label=np.zeros(images[0].shape, np.uint8) if label is None else np.asarray(label.data),
    )
    return report, loaded


def distinct_values(data: np.ndarray) -> np.ndarray:
    """The distinct values of ``data``, sorted: `np.unique`, by counting for small ints.

    Label maps are 8- or 16-bit integers; counting them is ten times faster than
    `np.unique`'s sort or hash at 240x240x155.
    """
    if data.dtype.kind in "iu" and data.dtype.itemsize <= 2:
        unsigned = np.dtype(f"u{data.dtype.itemsize}")
        counts = np.bincount(data.view(unsigned).ravel(order="K"), minlength=1)
        present = np.flatnonzero(counts).astype(unsigned).view(data.dtype)
        return np.sort(present)
    return np.unique(data)


def _check_volumes(
    case: Case, volumes: dict[str, _Volume], label: _Volume | None, report: CaseReport
) -> None:
    reference: tuple[str, _Volume] | None = None
    for name, volume in [*volumes.items(), *([("label", label)] if label else [])]:
        if volume.data.ndim != 3:
            report.problems.append(f"{name}: expected 3-D, got shape {list(volume.data.shape)}")
            continue
        if min(volume.data.shape) == 0:
            report.problems.append(f"{name}: empty volume (shape {list(volume.data.shape)})")
            continue
        if reference is None:
            reference = (name, volume)
            report.shape = tuple(int(s) for s in volume.data.shape)
            continue
        ref_name, ref = reference
        if volume.data.shape != ref.data.shape:
            report.problems.append(
                f"{name}: shape {list(volume.data.shape)} differs from {ref_name} "
                f"{list(ref.data.shape)}"
            )
        elif not np.allclose(volume.affine, ref.affine, atol=1e-3):
            report.problems.append(f"{name}: affine differs from {ref_name}")
    for name, volume in volumes.items():
        if volume.data.ndim != 3 or min(volume.data.shape) == 0:
            continue
        try:
            data = np.asarray(volume.data)
        except Exception as exc:  # lazily decoded data can still fail here
            report.problems.append(f"{name}: unreadable data ({type(exc).__name__})")
            continue
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            report.problems.append(f"{name}: holds NaN or infinite voxels")
        elif not np.any(data):
            report.problems.append(f"{name}: empty volume (all zero)")
        elif data.dtype.kind in "fiu" and float(np.nanmax(data)) == float(np.nanmin(data)):
            report.problems.append(f"{name}: constant volume")
    if label is not None and label.data.ndim == 3 and min(label.data.shape) > 0:
        data = np.asarray(label.data)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            report.problems.append("label: holds NaN or infinite voxels")
            return
        values = distinct_values(data)
        if data.dtype.kind == "f" and not np.all(values == np.round(values)):
            report.problems.append("label: holds non-integer values")
            return
        allowed = set(case.label_map)
        outside = sorted(int(v) for v in values if int(v) not in allowed)
        if outside:
            report.problems.append(
                f"label: values {outside} outside the layout's set {sorted(allowed)}"
            )
        elif not np.any(data):
            report.warnings.append("label: no tumour in this case")


def check_dataset(path: Path, min_cases: int = 2) -> DataReport:
    """Check every case under ``path``; one broken file never stops the check."""
    try:
        dataset = discover(path)
    except DataError as exc:
        return DataReport(root=Path(path), layout=None, min_cases=min_cases, problems=[exc.message])
    report = DataReport(root=dataset.root, layout=dataset.layout, min_cases=min_cases)
    if not dataset.cases:
        report.problems.append(f"no cases found under {path}")
    counts = Counter(case.case_id for case in dataset.cases)
    for case in dataset.cases:
        case_report = check_case(case)
        if counts[case.case_id] > 1:
            case_report.problems.append(
                f"duplicate case id ({counts[case.case_id]} cases are named {case.case_id})"
            )
        report.cases.append(case_report)
    return report


def valid_cases(path: Path, min_cases: int = 1) -> tuple[list[Case], DataReport]:
    """The cases whose own check is clean; raise `DataError` when fewer than ``min_cases``.

    Discovers once: the cases returned are the very objects that were checked.
    """
    report = check_dataset(path, min_cases)
    if report.problems:
        raise DataError("; ".join(report.problems))
    cases = report.usable
    if len(cases) < min_cases:
        raise DataError(
            f"only {len(cases)} of {len(report.cases)} cases under {path} are valid; "
            f"need {min_cases} (run: fedseg client check-data {path})"
        )
    return cases, report
