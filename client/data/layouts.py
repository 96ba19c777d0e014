"""Layouts: find the cases of a dataset folder or datalist, whatever its naming.

Every supported layout becomes the same typed `Case`: four channels in the canonical
order t1, t1ce, t2, flair (separate files, or one 4-D file plus the index of each
canonical modality in it) and a label file with a map from the layout's codes to
BraTS codes (1 necrotic core, 2 edema, 4 enhancing tumour). Training then only ever
sees one convention. Layouts:

- BraTS 2018: ``HGG|LGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``;
- BraTS 2021+: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, and the BraTS 2023
  names ``_{t1n,t1c,t2w,t2f}`` with label 3 for enhancing tumour;
- MSD Task01: ``dataset.json``, ``imagesTr/*.nii.gz`` (4-D: FLAIR, T1w, T1gd, T2w),
  ``labelsTr`` (1 edema, 2 non-enhancing, 3 enhancing);
- a MONAI datalist JSON: ``{"training": [{"image": [...4 paths], "label": path}]}``.

Nothing here trains or talks to a network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from shared.errors import DataError

MODALITIES: Final = ("t1", "t1ce", "t2", "flair")
REGIONS: Final = ("tc", "wt", "et")
BRATS_LABELS: Final = frozenset({0, 1, 2, 4})
# BraTS codes making up each region, in output channel order TC, WT, ET.
REGION_CODES: Final[tuple[frozenset[int], ...]] = (
    frozenset({1, 4}),
    frozenset({1, 2, 4}),
    frozenset({4}),
)

Layout = Literal["brats2018", "brats2021", "msd", "datalist"]

_IDENTITY: Final = {0: 0, 1: 1, 2: 2, 4: 4}
_BRATS2023: Final = {0: 0, 1: 1, 2: 2, 3: 4}
_MSD: Final = {0: 0, 1: 2, 2: 1, 3: 4}
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c", "t1gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}
_SEG_SUFFIXES: Final = ("seg",)
_NII: Final = re.compile(r"\.nii(\.gz)?$")
_MODALITY_SUFFIX: Final = re.compile(
    r"^(.+)[_-](t1|t1ce|t1c|t1n|t1gd|t2|t2w|t2f|flair|seg)$", re.IGNORECASE
)
_MSD_MODALITY_NAMES: Final = {
    "flair": "flair",
    "t1w": "t1",
    "t1": "t1",
    "t1gd": "t1ce",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t2w": "t2",
    "t2": "t2",
}


@dataclass(frozen=True, slots=True)
class Case:
    """One patient: where its images and label are and how to read them canonically.

    ``images`` holds four paths (t1, t1ce, t2, flair; ``None`` where the file is
    missing) or a single 4-D path; ``channel_index[k]`` is the position in that
    4-D file of canonical modality ``k``. ``label_map`` maps file codes to BraTS codes.
    """

    case_id: str
    images: tuple[Path | None, ...]
    label: Path | None
    label_map: Mapping[int, int] = field(default_factory=lambda: dict(_IDENTITY))
    channel_index: tuple[int, ...] = (0, 1, 2, 3)
    layout: Layout = "brats2021"

    @property
    def is_4d(self) -> bool:
        """Whether the four modalities live in one 4-D file."""
        return len(self.images) == 1

    def transform_dict(self) -> dict[str, Any]:
        """The dict the MONAI pipeline loads (paths as strings, reading hints)."""
        if any(path is None for path in self.images) or self.label is None:
            raise DataError(f"case {self.case_id} has missing files")
        return {
            "case_id": self.case_id,
            "image": [str(path) for path in self.images],
            "label": str(self.label),
            "channel_index": list(self.channel_index),
            "label_map": [[int(k), int(v)] for k, v in sorted(self.label_map.items())],
        }


@dataclass(frozen=True, slots=True)
class Dataset:
    """The cases found under a path and the layout they were found in."""

    root: Path
    layout: Layout
    cases: tuple[Case, ...]


# --- discovery ---------------------------------------------------------------------------


def discover(path: Path) -> Dataset:
    """Find every case under ``path``; raise `DataError` if no layout matches."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix != ".json":
            raise DataError(f"{path} is neither a dataset folder nor a JSON datalist")
        document = _read_json(path)
        if _looks_like_msd(document, path.parent):
            return _discover_msd(path.parent, document)
        return _discover_datalist(path, document)
    if (path / "dataset.json").is_file():
        document = _read_json(path / "dataset.json")
        if _looks_like_msd(document, path):
            return _discover_msd(path, document)
        return _discover_datalist(path / "dataset.json", document)
    if (path / "HGG").is_dir() or (path / "LGG").is_dir():
        cases = [
            case
            for grade in ("HGG", "LGG")
            if (path / grade).is_dir()
            for case in _discover_case_dirs(path / grade, "brats2018")
        ]
        return Dataset(path, "brats2018", tuple(cases))
    cases = _discover_case_dirs(path, "brats2021")
    if not cases:
        raise DataError(
            f"no cases found under {path}: expected BraTS 2018 (HGG/LGG), BraTS 2021 "
            "(<case>/<case>_flair.nii.gz ...), MSD Task01 (dataset.json) or a datalist JSON"
        )
    return Dataset(path, "brats2021", tuple(cases))


def case_in_folder(folder: Path) -> Case | None:
    """The case whose four modality files lie directly in ``folder`` (BraTS 2021+ names)."""
    return next(
        (
            case
            for case in _discover_case_dirs(folder.parent, "brats2021")
            if case.case_id == folder.name
        ),
        None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise DataError(f"{path} does not hold a JSON object")
    return document


def _split_name(name: str) -> tuple[str, str] | None:
    """``BraTS_001_t1ce.nii.gz`` -> (``BraTS_001``, ``t1ce``); BraTS 2023 uses ``-t1c``."""
    stem = _NII.sub("", name)
    if stem == name:
        return None
    match = _MODALITY_SUFFIX.match(stem)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def _discover_case_dirs(parent: Path, layout: Layout) -> list[Case]:
    cases = []
    for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
        files: dict[str, Path] = {}
        for entry in folder.iterdir():
            parts = _split_name(entry.name)
            if parts is not None:
                files[parts[1]] = entry
        if not files:
            continue
        images: list[Path | None] = []
        for modality in MODALITIES:
            found = next((files[s] for s in _SUFFIXES[modality] if s in files), None)
            images.append(found)
        label = next((files[s] for s in _SEG_SUFFIXES if s in files), None)
        brats2023 = "t2f" in files or "t1n" in files
        cases.append(
            Case(
                case_id=folder.name,
                images=tuple(images),
                label=label,
                label_map=dict(_BRATS2023 if brats2023 else _IDENTITY),
                layout=layout,
            )
        )
    return cases


def _looks_like_msd(document: Mapping[str, Any], root: Path) -> bool:
    training = document.get("training")
    return (
        "modality" in document
        and isinstance(training, list)
        and bool(training)
        and isinstance(training[0], dict)
        and isinstance(training[0].get("image"), str)
    )


def _msd_channel_index(modality: Mapping[str, Any]) -> tuple[int, ...]:
    """Position of each canonical modality in MSD's 4-D images, from ``dataset.json``."""
    by_name: dict[str, int] = {}
    for index, name in modality.items():
        canonical = _MSD_MODALITY_NAMES.get(str(name).lower().replace("-", ""))
        if canonical is None:
            raise DataError(f"dataset.json names an unknown modality {name!r}")
        by_name[canonical] = int(index)
    if set(by_name) != set(MODALITIES):
        raise DataError(f"dataset.json must name t1, t1ce, t2 and flair, not {sorted(by_name)}")
    return tuple(by_name[m] for m in MODALITIES)


def _msd_label_map(labels: Mapping[str, Any] | None) -> dict[int, int]:
    """Map MSD label codes to BraTS codes by their names (defaults to Task01's codes)."""
    if not labels:
        return dict(_MSD)
    out: dict[int, int] = {}
    for code, name in labels.items():
        text = str(name).lower().replace("-", " ")
        if "background" in text:
            out[int(code)] = 0
        elif "edema" in text or "oedema" in text:
            out[int(code)] = 2
        elif "non enhancing" in text or "necro" in text:
            out[int(code)] = 1
        elif "enhancing" in text:
            out[int(code)] = 4
        else:
            raise DataError(f"dataset.json names an unknown label {name!r}")
    return out


def _discover_msd(root: Path, document: Mapping[str, Any]) -> Dataset:
    channel_index = _msd_channel_index(document["modality"])
    label_map = _msd_label_map(document.get("labels"))
    cases = []
    for entry in document["training"]:
        image = _resolve(root, entry.get("image"))
        label = _resolve(root, entry.get("label"))
        if image is None:
            continue
        cases.append(
            Case(
                case_id=_NII.sub("", image.name),
                images=(image,),
                label=label,
                label_map=label_map,
                channel_index=channel_index,
                layout="msd",
            )
        )
    return Dataset(root, "msd", tuple(cases))


def _resolve(root: Path, value: object) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else (root / path)


def _modality_of(path: Path) -> str | None:
    parts = _split_name(path.name)
    if parts is None:
        return None
    return next((m for m, names in _SUFFIXES.items() if parts[1] in names), None)


def _discover_datalist(path: Path, document: Mapping[str, Any]) -> Dataset:
    """Read a MONAI datalist; modalities are ordered by file name, else taken as given."""
    root = Path(document.get("dataset_root", "")) if document.get("dataset_root") else path.parent
    if not root.is_absolute():
        root = path.parent / root
    entries: list[Any] = []
    for key in ("training", "validation"):
        value = document.get(key, [])
        if not isinstance(value, list):
            raise DataError(f"{path}: {key!r} must be a list")
        entries.extend(value)
    if not entries:
        raise DataError(f"{path} lists no cases under 'training'")
    cases = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {number} is not an object")
        raw = entry.get("image")
        paths = [raw] if isinstance(raw, str) else list(raw or [])
        resolved = [_resolve(root, item) for item in paths]
        label = _resolve(root, entry.get("label"))
        if len(resolved) == 1 and resolved[0] is not None:
            images: tuple[Path | None, ...] = (resolved[0],)
            channel_index: tuple[int, ...] = (0, 1, 2, 3)
        else:
            by_modality = {_modality_of(p): p for p in resolved if p is not None}
            if set(MODALITIES) <= set(by_modality):
                images = tuple(by_modality[m] for m in MODALITIES)
            else:  # no recognisable names: the datalist is in canonical order
                images = tuple(resolved[:4]) + (None,) * (4 - len(resolved[:4]))
            channel_index = (0, 1, 2, 3)
        first = next((p for p in images if p is not None), label)
        case_id = str(entry.get("case_id") or (first.parent.name if first else f"case{number}"))
        if first is not None and len(images) == 1:
            case_id = str(entry.get("case_id") or _NII.sub("", first.name))
        labels = entry.get("label_map")
        label_map = (
            {int(k): int(v) for k, v in labels.items()}
            if isinstance(labels, dict)
            else dict(_IDENTITY)
        )
        cases.append(
            Case(
                case_id=case_id,
                images=images,
                label=label,
                label_map=label_map,
                channel_index=channel_index,
                layout="datalist",
            )
        )
    return Dataset(root, "datalist", tuple(cases))
