"""Splits: which of a site's cases train and which validate, decided the same way every time.

Rules, in order:

1. A held-out list the site pins (``--holdout FILE``) wins: exactly the listed cases
   that exist validate, every other case trains.
2. Otherwise the validation count is ``round(n * val_fraction)``, at least one and at
   most ``n - min_train`` (so 2 cases split 1/1, 3 cases 2/1, 4 cases 3/1, 10 cases 8/2
   at the default fraction 0.2). A single case only trains.
3. Which cases validate is decided by ranking a hash of each case id with the run's
   seed: the same ids and seed always give the same split, wherever the files are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Split:
    """Case ids for training and for validation, and whether the site pinned the latter."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    pinned: bool = False

    def describe(self) -> str:
        """One log line: counts and the validation ids."""
        how = "site-pinned held-out list" if self.pinned else "seeded hash"
        shown = ", ".join(self.val[:10]) + (" …" if len(self.val) > 10 else "")
        return (
            f"split ({how}): {len(self.train)} training, {len(self.val)} validation cases"
            f"{f' [{shown}]' if shown else ''}"
        )


def _rank(case_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{case_id}".encode()).digest()


def split_ids(
    case_ids: Sequence[str],
    *,
    val_fraction: float,
    seed: int,
    min_train: int = 1,
    held_out: Collection[str] | None = None,
) -> Split:
    """Split ``case_ids`` by the rules in the module docstring (input order is irrelevant)."""
    ids = sorted(set(case_ids))
    if held_out is not None:
        pinned = set(held_out)
        return Split(
            train=tuple(i for i in ids if i not in pinned),
            val=tuple(i for i in ids if i in pinned),
            pinned=True,
        )
    count = len(ids)
    if count < 2:
        return Split(train=tuple(ids), val=())
    n_val = min(max(1, round(count * val_fraction)), max(1, count - min_train))
    ranked = sorted(ids, key=lambda case_id: _rank(case_id, seed))
    val = set(ranked[:n_val])
    return Split(train=tuple(i for i in ids if i not in val), val=tuple(i for i in ids if i in val))


def read_held_out(path: Path) -> list[str]:
    """Case ids from a text file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the held-out list {path}: {exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ConfigError(f"the held-out list {path} names no case (one case id per line)")
    return ids
