"""Blobs stored for an update whose row was not committed: remove them, unless shared.

Intake stores a verified update's blob before it inserts the row (so a committed row
never names a missing blob). When the insert or commit fails, or the round closed
meanwhile, the blob would be a model-sized orphan: `PendingBlobs.discard` removes it.
Blobs are content-addressed, so the same key may belong to a committed row (a fresh
read asks) or to another upload between its `put_file` and its commit (counted here).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from server.db.engine import Database
from server.storage import BlobStore

log = logging.getLogger(__name__)


class PendingBlobs:
    """The blob keys between ``put_file`` and their row's commit, and their clean-up."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs
        self._storing: Counter[str] = Counter()

    @contextmanager
    def storing(self, key: str) -> Iterator[None]:
        """Mark ``key`` in flight, so a failed upload never removes another's blob."""
        self._storing[key] += 1
        try:
            yield
        finally:
            self._storing[key] -= 1
            if not self._storing[key]:
                del self._storing[key]

    async def discard(self, key: str) -> None:
        """After a failed commit: remove the blob unless something still references it.

        Called inside ``storing(key)``. The check of the in-flight count and the unlink
        run with no await between them, so no upload can start storing the same key in
        between. When the database cannot say, the blob stays (the start-up sweep
        decides later). Never raises: the caller re-raises the error that matters.
        """
        try:
            async with self._db.read() as repo:
                in_use = await repo.blob_in_use(key)
        except Exception:
            log.exception("could not check blob %s of an uncommitted update; it is kept", key)
            return
        if in_use or self._storing[key] > 1:
            log.warning("update %s was not committed; its blob is shared, so kept", key)
            return
        try:
            freed = self._blobs.remove(key)
        except OSError:
            log.exception("could not remove blob %s of an uncommitted update", key)
            return
        log.warning("update %s was not committed; its blob (%d bytes) is removed", key, freed)
