"""The preprocessed-case cache: each case preprocessed once, then memory-mapped from disk.

Layout (under the state directory, ``cache/``)::

    v<PREPROCESSING_VERSION>/<entry>/
        image.npy      float16 (4, X, Y, Z), normalised, t1 t1ce t2 flair
        label.npy      uint8 (3, X, Y, Z), regions TC WT ET
        positive.npy   int32 (N, 3) crop centres inside the whole tumour (at most 20,000)
        anywhere.npy   int32 (N, 3) crop centres inside the brain (at most 20,000)
        meta.json      the sources (path, size, mtime, sha256), spacing, file sizes

An entry is written in a temporary folder and renamed into place, so it is there
whole or not at all. It is used only when every source file still has the size and
mtime it records (or, when only the mtime moved, the same sha256) and every array
file has the size it records: a changed source is re-read, and a torn entry is
rebuilt, never trained on. Holding a case costs a few hundred kilobytes of centres;
its voxels stay on disk until a step or an evaluation asks for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

from client.data.checks import LoadedCase, read_case
from client.data.layouts import Case
from client.data.preprocess import PREPROCESSING_VERSION, Preprocessed, preprocess_loaded
from shared.errors import DataError

log = logging.getLogger(__name__)

MAX_CENTRES: Final = 20_000
_T = TypeVar("_T")
_ARRAYS: Final = ("image", "label", "positive", "anywhere")


@dataclass(frozen=True, slots=True)
class CachedCase:
    """One preprocessed case on disk: its arrays are opened (memory-mapped) on demand."""

    case_id: str
    folder: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    positive: np.ndarray
    anywhere: np.ndarray

    def image(self) -> np.ndarray:
        """The image as a read-only memory map, float16 (4, X, Y, Z)."""
        image: np.ndarray = np.load(self.folder / "image.npy", mmap_mode="r")
        return image

    def label(self) -> np.ndarray:
        """The regions as a read-only memory map, uint8 (3, X, Y, Z)."""
        label: np.ndarray = np.load(self.folder / "label.npy", mmap_mode="r")
        return label


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What `load_cases` did: how many entries it reused and how many it built."""

    reused: int
    built: int
    seconds_building: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sources(case: Case) -> list[Path]:
    paths = [p for p in (*case.images, case.label) if p is not None]
    return [p.resolve() for p in paths]


def _entry_name(case: Case) -> str:
    ident = json.dumps(
        [case.case_id, [str(p) for p in _sources(case)], case.transform_dict()], sort_keys=True
    )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.case_id)[:48]
    return f"{safe}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _triple(values: Sequence[Any], kind: Callable[[Any], _T]) -> tuple[_T, _T, _T]:
    return (kind(values[0]), kind(values[1]), kind(values[2]))


def _centres(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to MAX_CENTRES voxels of ``mask``, as ``np.argwhere`` rows sampled by ``rng``.

    Sampled as flat indices and unravelled after: the same points as sampling the
    rows of ``np.argwhere(mask)``, without building millions of rows first.
    """
    flat = np.flatnonzero(mask)
    if len(flat) > MAX_CENTRES:
        flat = flat[rng.choice(len(flat), MAX_CENTRES, replace=False)]
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)


class CaseCache:
    """Preprocessed cases under ``root``; see the module docstring for the rules."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / f"v{PREPROCESSING_VERSION}"

    def folder(self, case: Case) -> Path:
        """Where the entry of ``case`` lives."""
        return self.root / _entry_name(case)

    def lookup(self, case: Case) -> CachedCase | None:
        """The entry of ``case`` if it is whole and its sources are unchanged, else ``None``."""
        folder = self.folder(case)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("version") != PREPROCESSING_VERSION or meta["case_id"] != case.case_id:
                return None
            for name in _ARRAYS:
                if (folder / f"{name}.npy").stat().st_size != meta["bytes"][name]:
                    log.warning("cache entry of %s is torn (%s); rebuilding", case.case_id, name)
                    return None
            recorded = meta["sources"]
            sources = _sources(case)
            if [r["path"] for r in recorded] != [str(p) for p in sources]:
                return None
            for record, path in zip(recorded, sources, strict=True):
                stat = path.stat()
                if stat.st_size != record["size"]:
                    return None
                if stat.st_mtime_ns != record["mtime_ns"] and _sha256(path) != record["sha256"]:
                    return None
            positive = np.load(folder / "positive.npy")
            anywhere = np.load(folder / "anywhere.npy")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return CachedCase(
            case_id=case.case_id,
            folder=folder,
            shape=_triple(meta["shape"], int),
            spacing=_triple(meta["spacing"], float),
            positive=positive,
            anywhere=anywhere,
        )

    def build(self, case: Case) -> CachedCase:
        """Read and check ``case`` (each source once), preprocess and store it atomically."""
        report, loaded = read_case(case)
        if loaded is None:
            raise DataError(f"case {case.case_id} is unusable: {'; '.join(report.problems)}")
        return self.store(loaded)

    def store(self, loaded: LoadedCase) -> CachedCase:
        """Preprocess voxels already read and checked, and store the entry atomically."""
        case = loaded.case
        records: list[dict[str, Any]] = []
        for path in _sources(case):
            stat = path.stat()
            records.append(
                {
                    "path": str(path),
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": _sha256(path),
                }
            )
        done = preprocess_loaded(loaded)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.folder(case)
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            meta = self._write(scratch, done, records)
            if final.exists():
                shutil.rmtree(final)
            scratch.replace(final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return CachedCase(
            case_id=case.case_id,
            folder=final,
            shape=_triple(meta["shape"], int),
            spacing=done.spacing,
            positive=np.load(final / "positive.npy"),
            anywhere=np.load(final / "anywhere.npy"),
        )

    @staticmethod
    def _write(folder: Path, done: Preprocessed, records: list[dict[str, Any]]) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        arrays = {
            # C order: np.save writes a non-contiguous array element by element
            # (1.5 s for a full-size image instead of 10 ms)
            "image": done.image.astype(np.float16, order="C"),
            "label": done.label,
            "positive": _centres(done.label[1] > 0, rng),
            "anywhere": _centres(np.any(done.image != 0, axis=0), rng),
        }
        if not np.isfinite(arrays["image"]).all():
            raise DataError(f"case {done.case_id} overflows float16 after normalisation")
        sizes = {}
        for name, array in arrays.items():
            path = folder / f"{name}.npy"
            with path.open("wb") as handle:
                np.save(handle, array)
                handle.flush()
                os.fsync(handle.fileno())
            sizes[name] = path.stat().st_size
        meta: dict[str, Any] = {
            "version": PREPROCESSING_VERSION,
            "case_id": done.case_id,
            "shape": tuple(int(s) for s in done.image.shape[1:]),
            "spacing": list(done.spacing),
            "sources": records,
            "bytes": sizes,
        }
        with (folder / "meta.json").open("w") as handle:
            json.dump(meta, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        return meta

    def load(self, case: Case) -> tuple[CachedCase, bool]:
        """The entry of ``case``, built when missing or stale; and whether it was built."""
        found = self.lookup(case)
        if found is not None:
            return found, False
        return self.build(case), True


def load_cases(
    cases: Sequence[Case],
    cache_dir: Path,
    *,
    on_case: Callable[[int, int, CachedCase, bool], None] | None = None,
) -> tuple[list[CachedCase], CacheStats]:
    """Every case through the cache, one at a time (memory of one case at most)."""
    if not cases:
        raise DataError("no cases to train on")
    cache = CaseCache(cache_dir)
    out: list[CachedCase] = []
    built = 0
    building = 0.0
    for index, case in enumerate(cases, start=1):
        started = time.perf_counter()
        entry, was_built = cache.load(case)
        if was_built:
            built += 1
            building += time.perf_counter() - started
        out.append(entry)
        if on_case is not None:
            on_case(index, len(cases), entry, was_built)
    return out, CacheStats(reused=len(cases) - built, built=built, seconds_building=building)
