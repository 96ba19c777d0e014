"""Progress a person can follow: one INFO line per phase of a round, and a step meter.

Training says its rate and an estimate of the time left about every tenth of its
steps, so a site that trains for an hour is never silent for more than minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("client.progress")


@dataclass(slots=True)
class StepMeter:
    """Logs ``label`` step k/n with rate and ETA at each ~10% of ``total`` steps."""

    label: str
    total: int
    clock: Callable[[], float] = time.perf_counter
    started: float = field(default=0.0)
    _next: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._next = max(1, round(self.total / 10))

    def __call__(self, step: int, total: int, loss: float) -> None:
        """The callback training calls after each step."""
        if step < self._next and step != total:
            return
        self._next = step + max(1, round(total / 10))
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = step / elapsed
        eta = (total - step) / rate if rate > 0 else float("inf")
        log.info(
            "%s: step %d/%d (%d%%), %.2f steps/s, loss %.4f, %s left",
            self.label,
            step,
            total,
            round(100 * step / total),
            rate,
            loss,
            _duration(eta),
        )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
