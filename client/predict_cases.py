"""Which cases ``fedseg predict`` was given: a thin adapter over `client.data` discovery.

Kept apart so that discovery can change (layouts, caches) by re-pointing this module
only. An input is a dataset in any supported layout (BraTS 2018/2021+, MSD Task01, a
datalist JSON) or the folder of one case; a case needs its four images, not a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from client import data
from client.data.layouts import case_in_folder
from shared.errors import DataError

if TYPE_CHECKING:
    from client.predict import CaseResult


def _single_case(folder: Path) -> data.Case | None:
    """The case whose modality files lie directly in ``folder``, if they do."""
    return case_in_folder(folder)


def find_cases(inputs: Sequence[Path]) -> tuple[list[data.Case], list[CaseResult]]:
    """The cases of every input, and a failed result for each input that has none."""
    from client.predict import CaseResult

    cases: list[data.Case] = []
    failed: list[CaseResult] = []
    for path in inputs:
        single = _single_case(path) if path.is_dir() else None
        if single is not None:
            cases.append(single)
            continue
        try:
            cases.extend(data.discover(path).cases)
        except DataError as exc:
            failed.append(CaseResult(path.name or str(path), error=exc.message))
    seen: dict[str, data.Case] = {}
    unique = []
    for case in cases:
        if case.case_id in seen:
            if seen[case.case_id].images != case.images:  # same name, other files
                failed.append(CaseResult(case.case_id, error="another input has this case id"))
            continue
        seen[case.case_id] = case
        unique.append(case)
    return unique, failed
