"""Per-address counters in fixed windows, in memory and bounded, for the edge's rate limits.

One `AddressWindow` counts events (failed logins, enrollments) per client address in
windows of ``window_s`` seconds; an address that reached ``limit`` in its window is
refused until the window ends, which is the ``Retry-After`` it is told. Memory is
bounded by ``max_addresses``: the least recently counted address is forgotten first,
so a flood of new addresses costs at most that many entries (and at worst lets a
forgotten address start a fresh window, never blocks an innocent one).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class AddressWindow:
    """Count events per address; say how long an address over its limit must wait."""

    def __init__(
        self,
        *,
        limit: int,
        window_s: float,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds ``address`` must wait, or None when it may go on."""
        entry = self._windows.get(address)
        if entry is None:
            return None
        started, count = entry
        remaining = started + self.window_s - self._clock()
        if remaining <= 0:
            del self._windows[address]
            return None
        return max(1, math.ceil(remaining)) if count >= self.limit else None

    def add(self, address: str) -> int:
        """Count one event for ``address``; returns the count in its current window."""
        moment = self._clock()
        started, count = self._windows.pop(address, (moment, 0))
        if moment - started >= self.window_s:
            started, count = moment, 0
        self._windows[address] = (started, count + 1)
        while len(self._windows) > self.max_addresses:
            self._windows.popitem(last=False)
        return count + 1
