"""Read-side operations: the audit log and readiness."""

from __future__ import annotations

from anyio import to_thread

from server.db.engine import Database
from server.db.repositories import audit_event_info
from server.services.auth import Principal
from server.storage import BlobStore
from shared.errors import InvalidInput, Unavailable
from shared.schemas import AuditEvent

MAX_AUDIT_PAGE = 1000


class OperationsService:
    """Audit log reads and the readiness probe."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    async def audit(
        self, actor: Principal, *, limit: int, after: int, newest: bool = False
    ) -> list[AuditEvent]:
        """Audit events after id ``after``, at most ``limit``: oldest first, or newest first."""
        actor.require_reader()
        if not 1 <= limit <= MAX_AUDIT_PAGE or after < 0:
            raise InvalidInput(f"limit must be 1..{MAX_AUDIT_PAGE} and after >= 0")
        async with self._db.transaction() as repo:
            return [
                audit_event_info(row)
                for row in await repo.audit_events(limit=limit, after=after, newest=newest)
            ]

    async def ready(self) -> None:
        """Raise `Unavailable` unless the database and the blob store answer."""
        try:
            await self._db.ping()
        except Exception as exc:
            raise Unavailable(f"database unreachable: {type(exc).__name__}") from None
        try:
            await to_thread.run_sync(self._blobs.check)
        except OSError as exc:
            raise Unavailable(f"blob store unwritable: {exc.strerror}") from None
