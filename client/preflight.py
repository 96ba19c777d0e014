"""Checks a site runs before any slow work: can it write its state and read its data.

Each check raises a `FedsegError` whose message is one line that says what is wrong
and what to do, and none of them writes anything: a read-only state dir or an
unreadable data mount is found in milliseconds, not after minutes of preprocessing.
The data checks recognise the usual mistakes: a DICOM export instead of NIfTI, the
folder of one case instead of the dataset, a dataset one folder further down.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from shared.errors import ConfigError, DataError

DICOM_SUFFIXES: Final = (".dcm", ".dicom", ".ima")
_MODALITY_FILE: Final = re.compile(
    r"[_-](t1|t1ce|t1c|t1n|t1gd|t2|t2w|t2f|flair|seg)\.nii(\.gz)?$", re.IGNORECASE
)
_SCAN_LIMIT: Final = 2000  # entries looked at while guessing what a folder holds


def _who() -> str:
    return f"uid {os.getuid()}, gid {os.getgid()}" if hasattr(os, "getuid") else "this user"


def check_state_dir(root: Path) -> None:
    """Refuse a state dir the process cannot write (or create), before any work."""
    root = Path(root)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"state dir {root}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == root else f"cannot be created: {existing} is"
        raise ConfigError(
            f"state dir {root} {what} not writable: permission denied (running as {_who()}); "
            f"make it writable for that user (e.g. chown -R {os.getuid()} {existing}) "
            "or pass another --state-dir"
        )


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())[:_SCAN_LIMIT]
    except PermissionError:
        raise DataError(
            f"cannot read data dir {path}: permission denied (running as {_who()}); "
            f"give that user read access (e.g. chmod -R a+rX {path})"
        ) from None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES or path.name.upper() == "DICOMDIR":
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _find_dicom(path: Path, depth: int = 3) -> Path | None:
    for entry in _entries(path):
        if entry.is_file() and _is_dicom(entry):
            return entry
        if entry.is_dir() and depth > 0:
            found = _find_dicom(entry, depth - 1)
            if found is not None:
                return found
    return None


def _has_nifti(path: Path, depth: int = 2) -> bool:
    for entry in _entries(path):
        if entry.name.endswith((".nii", ".nii.gz")):
            return True
        if entry.is_dir() and depth > 0 and _has_nifti(entry, depth - 1):
            return True
    return False


def _is_dataset_root(path: Path) -> bool:
    if (path / "dataset.json").is_file() or (path / "HGG").is_dir() or (path / "LGG").is_dir():
        return True
    return any(
        entry.is_dir() and any(_MODALITY_FILE.search(f.name) for f in _entries(entry))
        for entry in _entries(path)
    )


def check_data_dir(path: Path) -> None:
    """Refuse data the agent cannot use, naming the fix; silent when it looks right.

    It judges the folder's shape only; `client.data.check_dataset` judges the cases.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data dir {path} does not exist (is the volume mounted?)")
    if not os.access(path, os.R_OK):
        raise DataError(
            f"cannot read data {path}: permission denied (running as {_who()}); "
            f"give that user read access (e.g. chmod -R a+rX {path})"
        )
    if path.is_file():
        return
    if not os.access(path, os.X_OK):
        raise DataError(
            f"cannot open data dir {path}: permission denied (running as {_who()}); "
            f"give that user read access (e.g. chmod -R a+rX {path})"
        )
    entries = _entries(path)
    if any(_MODALITY_FILE.search(entry.name) for entry in entries if entry.is_file()):
        raise DataError(
            f"{path} looks like a single case (its modality files are right here); "
            f"point at the folder that holds the case folders: {path.parent}"
        )
    if _is_dataset_root(path):
        return
    dicom = _find_dicom(path)
    if dicom is not None and not _has_nifti(path):
        raise DataError(
            f"{path} holds DICOM files (e.g. {dicom.relative_to(path)}), not NIfTI: convert "
            "each series first, e.g. with dcm2niix (dcm2niix -z y -f <case>_flair -o "
            "<case folder> <series folder>), one folder per case with "
            "<case>_t1/_t1ce/_t2/_flair.nii.gz"
        )
    for entry in entries:
        if entry.is_dir() and _is_dataset_root(entry):
            raise DataError(f"{path} holds the dataset one level down; point at {entry} instead")
