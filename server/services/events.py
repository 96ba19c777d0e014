"""Wake-ups for long-polls: one broadcast whenever rounds or runs change."""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    """A broadcast without payload: waiters wake on the next `notify`, or time out."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """Take this before checking state, then wait on it: no wake-up is missed."""
        return self._event

    def notify(self) -> None:
        """Wake every waiter."""
        self._event.set()
        self._event = asyncio.Event()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        """Wait for ``event`` at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
