"""Where a round's updates come from when it closes: memory, or files mapped read-only.

The robust strategies need every site's update at once, per coordinate. Holding N
decoded models in memory is what the streaming mean avoids, so `mapped_updates`
maps each decrypted update file (plain safetensors) read-only: the arrays are
views of the page cache, read as the chunks touch them, never copied to the heap.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.arrays import Array, from_safetensors
from shared.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class SiteUpdate:
    """One site's delta (numpy arrays, possibly views of a mapped file) and its case count."""

    arrays: Mapping[str, Array]
    num_samples: int


def from_memory(pairs: Sequence[tuple[Mapping[str, Array], int]]) -> list[SiteUpdate]:
    """Updates already decoded in memory: ``(arrays, num_samples)`` pairs."""
    return [SiteUpdate(arrays=arrays, num_samples=count) for arrays, count in pairs]


def _parse(mapped: mmap.mmap) -> Mapping[str, Array]:
    """`from_safetensors` over a mapping; a refusal leaves no view that would pin it open."""
    failure: IntegrityError | None = None
    try:
        return from_safetensors(memoryview(mapped))
    except IntegrityError as exc:  # its traceback holds the view: re-raise a clean copy
        failure = IntegrityError(exc.message, code=exc.code)
    raise failure


@contextmanager
def mapped_updates(files: Sequence[tuple[Path, int]]) -> Iterator[list[SiteUpdate]]:
    """Map plain safetensors update files read-only for the duration of the block.

    The files must already be verified and decrypted (the envelope checks run at
    intake); the header is parsed again, as strictly as at intake, before any
    array is viewed. The arrays are valid only inside the block.
    """
    with ExitStack() as stack:
        updates = []
        for path, count in files:
            handle = stack.enter_context(path.open("rb"))
            mapped = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
            updates.append(SiteUpdate(arrays=_parse(mapped), num_samples=count))
        try:
            yield updates
        finally:
            updates.clear()
