"""Progress a person can follow: one INFO line per phase of a round, and a step meter.

Training says its rate and an estimate of the time left about every tenth of its
steps, so a site that trains for an hour is never silent for more than minutes.
On a terminal (`show_bars`) the meter also drives a live rich progress bar. The
loss is read from the device only when a line is logged: reading it every step
would make the GPU wait for the host each step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, SupportsFloat

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

log = logging.getLogger("client.progress")

_console: Console | None = None


def show_bars(console: Console | None) -> None:
    """Draw a progress bar for each training on ``console`` (None: log lines only)."""
    global _console
    _console = console


@dataclass(slots=True)
class _Bar:
    """A transient rich progress bar for one training."""

    progress: Progress
    task: TaskID

    @classmethod
    def start(cls, console: Console, label: str, total: int) -> _Bar:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        progress.start()
        return cls(progress, progress.add_task(label, total=total))

    def update(self, step: int, total: int) -> None:
        self.progress.update(self.task, completed=step)
        if step >= total:
            self.progress.stop()


@dataclass(slots=True)
class StepMeter:
    """Logs ``label`` step k/n with rate and ETA at each ~10% of ``total`` steps."""

    label: str
    total: int
    clock: Callable[[], float] = time.perf_counter
    started: float = field(default=0.0)
    _next: int = 0
    _bar: _Bar | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._next = max(1, round(self.total / 10))
        if _console is not None and self.total > 1:
            self._bar = _Bar.start(_console, self.label, self.total)

    def __call__(self, step: int, total: int, loss: SupportsFloat) -> None:
        """The callback training calls after each step (``loss`` may still be on the GPU)."""
        if self._bar is not None:
            self._bar.update(step, total)
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
            float(loss),
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
