"""A site's cases for training: cached once per process, split per run, cropped per step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from client.data.cache import CachedCase, CacheStats, load_cases
from client.data.checks import DataReport
from client.data.intake import intake
from client.data.layouts import Case
from client.data.splits import Split, split_ids
from client.training.crops import CropPool
from shared.schemas import TrainingConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SiteData:
    """The site's cached cases (a few hundred kilobytes each in memory) and its pinned list."""

    cases: dict[str, CachedCase]
    held_out: tuple[str, ...] | None = None
    stats: CacheStats = field(
        default_factory=lambda: CacheStats(reused=0, built=0, seconds_building=0.0)
    )
    _pools: dict[tuple[object, ...], CropPool] = field(default_factory=dict)

    def plan(self, config: TrainingConfig) -> Split:
        """The split a run's config gives here (the site's pinned list wins)."""
        return split_ids(
            list(self.cases),
            val_fraction=config.val_fraction,
            seed=config.seed,
            min_train=config.min_train,
            held_out=self.held_out,
        )

    def split(self, config: TrainingConfig) -> tuple[list[CachedCase], list[CachedCase]]:
        """Training and validation cases for a run's config."""
        plan = self.plan(config)
        return [self.cases[i] for i in plan.train], [self.cases[i] for i in plan.val]

    def pool(self, train: Sequence[CachedCase], crop: int, device: torch.device) -> CropPool:
        """A crop sampler for these training cases, kept per crop size and device."""
        key = (tuple(c.case_id for c in train), crop, str(device))
        if key not in self._pools:
            self._pools.clear()  # one pool at a time: it may hold the cases on the GPU
            self._pools[key] = CropPool(train, crop, device)
        return self._pools[key]


def open_site_data(
    path: Path,
    cache_dir: Path,
    *,
    held_out: Sequence[str] | None = None,
    min_cases: int = 2,
    on_case: Callable[[int, int, CachedCase, bool], None] | None = None,
) -> tuple[SiteData, DataReport]:
    """A dataset folder through `client.data.intake` (each file read at most once)."""
    cached, report, stats = intake(path, cache_dir, min_cases=min_cases, on_case=on_case)
    data = SiteData({c.case_id: c for c in cached}, stats=stats)
    _pin(data, held_out)
    return data, report


def _pin(data: SiteData, held_out: Sequence[str] | None) -> None:
    if held_out is not None:
        unknown = sorted(set(held_out) - set(data.cases))
        if unknown:
            log.warning("held-out list names %d unknown cases: %s", len(unknown), unknown[:5])
        data.held_out = tuple(held_out)


def load_site_data(
    cases: Sequence[Case],
    cache_dir: Path,
    *,
    held_out: Sequence[str] | None = None,
    on_case: Callable[[int, int, CachedCase, bool], None] | None = None,
) -> SiteData:
    """Every case through the on-disk cache (each source read once, only when stale)."""
    cached, stats = load_cases(cases, cache_dir, on_case=on_case)
    data = SiteData({c.case_id: c for c in cached}, stats=stats)
    _pin(data, held_out)
    return data
