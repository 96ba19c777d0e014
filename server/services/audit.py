"""The audit log's integrity and its record of refused requests.

Integrity: every event is sealed into a hash chain just after it commits
(`Repository.seal_audit`); `verify` recomputes the chain from the first event to
the head row and names the first broken link: an edited, deleted, inserted or
reordered event all break it.

Refusals (401, 403, 413) are counted in memory per source address, status and
code, and written as one event per window (`flush`), never one row per request:
a flood of wrong tokens cannot flood the database too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from server.db.engine import Database
from server.db.repositories import GENESIS_HASH, audit_digest
from server.services.auth import Principal, now
from shared.schemas import AuditVerification

WINDOW: Final = timedelta(seconds=60)
MAX_BUCKETS: Final = 10_000  # more sources than this in one window: flush early
MAX_PATHS: Final = 5
VERIFY_PAGE: Final = 1000
ACTIONS: Final = {401: "auth.failed", 403: "access.forbidden", 413: "request.too_large"}


@dataclass
class _Bucket:
    first_at: datetime
    last_at: datetime
    count: int = 0
    paths: set[str] = field(default_factory=set)


class AuditService:
    """Counts refusals into windowed events and checks the hash chain."""

    def __init__(self, db: Database, *, window: timedelta = WINDOW) -> None:
        self._db = db
        self._window = window
        self._buckets: dict[tuple[str, int, str], _Bucket] = {}

    def note_refusal(self, *, source: str, status: int, code: str, path: str) -> None:
        """Count one refused request; cheap, in memory, written later by `flush`."""
        if status not in ACTIONS:
            return
        moment = now()
        key = (source[:64], status, code[:32])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(moment, moment)
        bucket.count += 1
        bucket.last_at = moment
        if len(bucket.paths) < MAX_PATHS:
            bucket.paths.add(path[:200])

    @property
    def pending(self) -> int:
        """Refusals counted but not yet written."""
        return sum(bucket.count for bucket in self._buckets.values())

    async def flush(self, *, everything: bool = False) -> int:
        """Write one event per window that has ended (or per bucket, with ``everything``)."""
        moment = now()
        crowded = len(self._buckets) > MAX_BUCKETS
        due = [
            key
            for key, bucket in self._buckets.items()
            if everything or crowded or moment - bucket.first_at >= self._window
        ]
        if not due:
            return 0
        buckets = [(key, self._buckets.pop(key)) for key in due]
        async with self._db.transaction() as repo:
            for (source, status, code), bucket in buckets:
                await repo.audit(
                    actor=f"address:{source}",
                    action=ACTIONS[status],
                    target="api",
                    now=moment,
                    status=status,
                    code=code,
                    count=bucket.count,
                    first_at=bucket.first_at.isoformat(),
                    last_at=bucket.last_at.isoformat(),
                    paths=sorted(bucket.paths),
                )
        return len(buckets)

    async def verify(self, actor: Principal) -> AuditVerification:
        """Recompute the chain; the first broken link is named, with why."""
        actor.require_reader()
        await self._db.seal_audit()
        expected_seq, expected_prev, checked = 0, GENESIS_HASH, 0
        broken: tuple[int, int | None, str] | None = None
        while broken is None:
            async with self._db.transaction() as repo:
                rows = await repo.sealed_audit_events(after_seq=expected_seq, limit=VERIFY_PAGE)
            for row in rows:
                seq = row.seq or 0
                if seq != expected_seq + 1:
                    broken = (expected_seq + 1, None, f"event seq {expected_seq + 1} is missing")
                elif row.prev_hash != expected_prev:
                    broken = (seq, row.id, "its previous-hash does not match the event before")
                elif row.hash != audit_digest(row):
                    broken = (seq, row.id, "its contents do not match its hash")
                if broken is not None:
                    break
                expected_seq, expected_prev = seq, row.hash or ""
                checked += 1
            if len(rows) < VERIFY_PAGE:
                break
        async with self._db.transaction() as repo:
            head = await repo.audit_head()
            unsealed = await repo.count_unsealed_audit_events()
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        if broken is None and (head_seq, head_hash) != (expected_seq, expected_prev):
            broken = (
                expected_seq + 1,
                None,
                f"the chain ends at seq {expected_seq} but its head names seq {head_seq}",
            )
        return AuditVerification(
            ok=broken is None,
            checked=checked,
            unsealed=unsealed,
            head_seq=head_seq,
            head_hash=head_hash,
            broken_seq=broken[0] if broken else None,
            broken_id=broken[1] if broken else None,
            reason=broken[2] if broken else None,
        )
