"""Intake: a site's dataset in one pass, each source file read at most once per start.

Discover once; flag duplicate ids (every copy, none is used); a case whose cache
entry is fresh is used as is, without opening any of its files; a new or changed
case is read once, checked on those voxels, preprocessed from the same voxels and
cached. So a warm restart reads no NIfTI at all, and a cold one reads each file
once (today's flow read every case twice: once to check, once to preprocess).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from client.data.cache import CachedCase, CacheStats, CaseCache
from client.data.checks import CaseReport, DataReport, read_case
from client.data.layouts import discover
from shared.errors import DataError

log = logging.getLogger(__name__)

OnCase = Callable[[int, int, CachedCase, bool], None]


def intake(
    path: Path, cache_dir: Path, *, min_cases: int = 2, on_case: OnCase | None = None
) -> tuple[list[CachedCase], DataReport, CacheStats]:
    """Every usable case of ``path`` through the cache; `DataError` below ``min_cases``."""
    dataset = discover(path)
    report = DataReport(root=dataset.root, layout=dataset.layout, min_cases=min_cases)
    if not dataset.cases:
        raise DataError(f"no cases found under {path}")
    cache = CaseCache(cache_dir)
    counts = Counter(case.case_id for case in dataset.cases)
    usable: list[CachedCase] = []
    built, building = 0, 0.0
    for index, case in enumerate(dataset.cases, start=1):
        if counts[case.case_id] > 1:
            report.cases.append(
                CaseReport(
                    case.case_id,
                    case=case,
                    problems=[f"duplicate case id ({counts[case.case_id]} cases share it)"],
                )
            )
            continue
        entry = cache.lookup(case)
        was_built = False
        if entry is None:
            started = time.perf_counter()
            case_report, loaded = read_case(case)
            report.cases.append(case_report)
            if loaded is None:
                log.warning("case %s skipped: %s", case.case_id, "; ".join(case_report.problems))
                continue
            entry = cache.store(loaded)
            del loaded
            built += 1
            was_built = True
            building += time.perf_counter() - started
        else:
            report.cases.append(CaseReport(case.case_id, case=case, shape=entry.shape))
        usable.append(entry)
        if on_case is not None:
            on_case(index, len(dataset.cases), entry, was_built)
    if len(usable) < min_cases:
        raise DataError(
            f"only {len(usable)} of {len(dataset.cases)} cases under {path} are valid; "
            f"need {min_cases} (run: fedseg client check-data {path})"
        )
    stats = CacheStats(reused=len(usable) - built, built=built, seconds_building=building)
    return usable, report, stats
