"""The start-up sweep: remove blobs that no database row references.

Blobs are written before the row that names them is committed (a bundle before its
model version, an update before its row), so a crash, or a failure the intake could
not clean up, leaves model-sized files nothing will ever read. At start, after the
migrations and before anything is served or resumed, nothing is in flight, so every
stored blob that no row names is such an orphan and is deleted. It fails closed: when
the database cannot be read the sweep deletes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from anyio import to_thread

from server.db.engine import Database
from server.storage import BlobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a sweep did: blobs kept, blobs removed and the bytes they held."""

    kept: int
    removed: int
    freed_bytes: int


async def sweep_unreferenced_blobs(db: Database, blobs: BlobStore) -> SweepResult | None:
    """Delete every blob no row references; `None` (nothing deleted) if the DB cannot say."""
    try:
        async with db.read() as repo:
            referenced = await repo.blob_keys()
    except Exception:
        log.exception("blob sweep skipped: the database could not be read; every blob is kept")
        return None
    try:
        result = await to_thread.run_sync(_remove_all_but, blobs, referenced)
    except OSError:  # the store cannot be listed: serving will tell (readiness)
        log.exception("blob sweep stopped: the blob store could not be listed")
        return None
    if result.removed:
        log.warning(
            "blob sweep removed %d unreferenced blobs (%d bytes); %d kept",
            result.removed,
            result.freed_bytes,
            result.kept,
        )
    else:
        log.info("blob sweep: all %d blobs are referenced", result.kept)
    return result


def _remove_all_but(blobs: BlobStore, referenced: set[str]) -> SweepResult:
    """Remove each stored blob outside ``referenced``; a blob that will not go is kept."""
    kept = removed = freed = 0
    for key in list(blobs.keys()):
        if key in referenced:
            kept += 1
            continue
        try:
            freed += blobs.remove(key)
        except OSError:
            log.exception("blob sweep could not remove %s", key)
            kept += 1
            continue
        removed += 1
    return SweepResult(kept=kept, removed=removed, freed_bytes=freed)
