"""Repositories: the only place with SQL (with `declines`). One `Repository` per transaction.

Methods return rows; the ``*_info`` functions convert rows to wire schemas
explicitly, so a column rename never leaks onto the wire by accident.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import (
    AdminTokenRow,
    AuditChainRow,
    AuditEventRow,
    EnrollmentTokenRow,
    ModelVersionRow,
    RoundRow,
    RunRow,
    RunSiteRow,
    SiteProgressRow,
    SiteRow,
    UpdateRow,
)
from shared.schemas import (
    AuditEvent,
    ModelVersion,
    RunConfig,
    RunInfo,
    SiteInfo,
    TokenInfo,
    canonical_json,
)

GENESIS_HASH = "0" * 64  # the "previous hash" of the first event in the chain
SEAL_BATCH = 1000


class Repository:
    """Typed queries over one session; the caller owns the transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.audited = False  # an event was appended: seal the chain after the commit

    async def flush(self) -> None:
        """Send pending inserts so generated ids are known."""
        await self.session.flush()

    # --- sites -------------------------------------------------------------------------

    async def add_site(self, name: str, now: datetime) -> SiteRow:
        """Insert a pending site."""
        row = SiteRow(name=name, status="pending", created_at=now)
        self.session.add(row)
        await self.session.flush()
        return row

    async def site_by_name(self, name: str) -> SiteRow | None:
        """The site called ``name``, if any."""
        return await self.session.scalar(select(SiteRow).where(SiteRow.name == name))

    async def site_by_id(self, site_id: int) -> SiteRow | None:
        """The site with primary key ``site_id``."""
        return await self.session.get(SiteRow, site_id)

    async def site_by_credential(self, credential_hash: str) -> SiteRow | None:
        """The site whose credential hashes to ``credential_hash``."""
        return await self.session.scalar(
            select(SiteRow).where(SiteRow.credential_hash == credential_hash)
        )

    async def list_sites(self) -> Sequence[SiteRow]:
        """Every site, by name."""
        return (await self.session.scalars(select(SiteRow).order_by(SiteRow.name))).all()

    async def sites_by_names(self, names: Sequence[str]) -> Sequence[SiteRow]:
        """The sites among ``names`` that exist."""
        return (await self.session.scalars(select(SiteRow).where(SiteRow.name.in_(names)))).all()

    # --- tokens ------------------------------------------------------------------------

    async def add_enrollment_token(
        self, *, site_id: int, token_hash: str, now: datetime, expires_at: datetime
    ) -> None:
        """Store a one-time enrollment token's hash."""
        self.session.add(
            EnrollmentTokenRow(
                site_id=site_id, token_hash=token_hash, created_at=now, expires_at=expires_at
            )
        )
        await self.session.flush()

    async def enrollment_token(self, token_hash: str) -> EnrollmentTokenRow | None:
        """The enrollment token with this hash."""
        return await self.session.scalar(
            select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_hash == token_hash)
        )

    async def unused_enrollment_tokens(self, site_id: int) -> Sequence[EnrollmentTokenRow]:
        """A site's enrollment tokens that were never spent (expired or not)."""
        return (
            await self.session.scalars(
                select(EnrollmentTokenRow).where(
                    EnrollmentTokenRow.site_id == site_id, EnrollmentTokenRow.used_at.is_(None)
                )
            )
        ).all()

    async def add_admin_token(
        self, *, token_hash: str, role: str, label: str, now: datetime, expires_at: datetime
    ) -> AdminTokenRow:
        """Store an admin or viewer token's hash."""
        row = AdminTokenRow(
            token_hash=token_hash, role=role, label=label, created_at=now, expires_at=expires_at
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def admin_token_by_id(self, token_id: int) -> AdminTokenRow | None:
        """The admin or viewer token with primary key ``token_id``."""
        return await self.session.get(AdminTokenRow, token_id)

    async def admin_tokens(self) -> Sequence[AdminTokenRow]:
        """Every admin and viewer token, oldest first."""
        return (await self.session.scalars(select(AdminTokenRow).order_by(AdminTokenRow.id))).all()

    async def count_usable_admin_tokens(self, now: datetime) -> int:
        """Admin-role tokens neither revoked nor expired."""
        count = await self.session.scalar(
            select(func.count())
            .select_from(AdminTokenRow)
            .where(
                AdminTokenRow.role == "admin",
                AdminTokenRow.revoked_at.is_(None),
                (AdminTokenRow.expires_at.is_(None)) | (AdminTokenRow.expires_at > now),
            )
        )
        return int(count or 0)

    async def admin_token(self, token_hash: str) -> AdminTokenRow | None:
        """The admin token with this hash."""
        return await self.session.scalar(
            select(AdminTokenRow).where(AdminTokenRow.token_hash == token_hash)
        )

    # --- runs --------------------------------------------------------------------------

    async def add_run(self, row: RunRow, site_ids: Sequence[int]) -> None:
        """Insert a run and its membership."""
        self.session.add(row)
        await self.session.flush()
        self.session.add_all(RunSiteRow(run_id=row.id, site_id=site_id) for site_id in site_ids)
        await self.session.flush()

    async def run(self, run_id: str) -> RunRow | None:
        """The run with this id."""
        return await self.session.get(RunRow, run_id)

    async def list_runs(self) -> Sequence[RunRow]:
        """Every run, oldest first."""
        return (
            await self.session.scalars(select(RunRow).order_by(RunRow.created_at, RunRow.id))
        ).all()

    async def run_sites(self, run_id: str) -> Sequence[SiteRow]:
        """The member sites of a run, by name."""
        query = (
            select(SiteRow)
            .join(RunSiteRow, RunSiteRow.site_id == SiteRow.id)
            .where(RunSiteRow.run_id == run_id)
            .order_by(SiteRow.name)
        )
        return (await self.session.scalars(query)).all()

    async def is_member(self, run_id: str, site_id: int) -> bool:
        """Whether the site takes part in the run."""
        row = await self.session.get(RunSiteRow, (run_id, site_id))
        return row is not None

    async def running_runs_of_site(self, site_id: int) -> Sequence[RunRow]:
        """Running runs the site is a member of, oldest first."""
        query = (
            select(RunRow)
            .join(RunSiteRow, RunSiteRow.run_id == RunRow.id)
            .where(RunSiteRow.site_id == site_id, RunRow.status == "running")
            .order_by(RunRow.started_at, RunRow.id)
        )
        return (await self.session.scalars(query)).all()

    # --- rounds ------------------------------------------------------------------------

    async def add_round(self, row: RoundRow) -> RoundRow:
        """Insert a round."""
        self.session.add(row)
        await self.session.flush()
        return row

    async def round(self, run_id: str, number: int) -> RoundRow | None:
        """Round ``number`` of a run."""
        return await self.session.scalar(
            select(RoundRow).where(RoundRow.run_id == run_id, RoundRow.number == number)
        )

    async def rounds(self, run_id: str) -> Sequence[RoundRow]:
        """The rounds of a run, in order."""
        return (
            await self.session.scalars(
                select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.number)
            )
        ).all()

    async def active_rounds(self) -> Sequence[RoundRow]:
        """Rounds not yet decided (open or aggregating), oldest first."""
        return (
            await self.session.scalars(
                select(RoundRow)
                .where(RoundRow.status.in_(("open", "aggregating")))
                .order_by(RoundRow.id)
            )
        ).all()

    # --- updates -----------------------------------------------------------------------

    async def update_of(self, round_id: int, site_id: int) -> UpdateRow | None:
        """The accepted update of a site in a round, if any."""
        return await self.session.scalar(
            select(UpdateRow).where(UpdateRow.round_id == round_id, UpdateRow.site_id == site_id)
        )

    async def add_update(self, row: UpdateRow) -> None:
        """Insert an accepted update."""
        self.session.add(row)
        await self.session.flush()

    async def updates_of_round(self, round_id: int) -> Sequence[UpdateRow]:
        """Accepted updates of a round, in arrival order."""
        return (
            await self.session.scalars(
                select(UpdateRow).where(UpdateRow.round_id == round_id).order_by(UpdateRow.id)
            )
        ).all()

    async def count_updates(self, round_id: int) -> int:
        """How many updates a round has accepted."""
        count = await self.session.scalar(
            select(func.count()).select_from(UpdateRow).where(UpdateRow.round_id == round_id)
        )
        return int(count or 0)

    # --- progress ----------------------------------------------------------------------

    async def set_progress(
        self,
        *,
        round_id: int,
        site_id: int,
        state: str,
        message: str | None,
        metrics: dict[str, float],
        now: datetime,
    ) -> None:
        """Record the latest status a site reported for a round."""
        row = await self.session.get(SiteProgressRow, (round_id, site_id))
        if row is None:
            row = SiteProgressRow(round_id=round_id, site_id=site_id)
            self.session.add(row)
        row.state, row.message, row.metrics, row.updated_at = state, message, metrics, now
        await self.session.flush()

    async def progress_of_round(self, round_id: int) -> Sequence[SiteProgressRow]:
        """The last reported status of each site in a round."""
        return (
            await self.session.scalars(
                select(SiteProgressRow).where(SiteProgressRow.round_id == round_id)
            )
        ).all()

    # --- models ------------------------------------------------------------------------

    async def add_model_version(self, row: ModelVersionRow) -> None:
        """Insert a signed model version."""
        self.session.add(row)
        await self.session.flush()

    async def model_version(self, run_id: str, version: int) -> ModelVersionRow | None:
        """Version ``version`` of a run's model."""
        return await self.session.get(ModelVersionRow, (run_id, version))

    async def model_versions(self, run_id: str) -> Sequence[ModelVersionRow]:
        """Every model version of a run, in order."""
        return (
            await self.session.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.run_id == run_id)
                .order_by(ModelVersionRow.version)
            )
        ).all()

    async def bundle_keys(self) -> set[str]:
        """Blob keys of every stored bundle (for the in-use check of the blob store)."""
        return set((await self.session.scalars(select(ModelVersionRow.bundle))).all())

    # --- blob references ---------------------------------------------------------------
    # Every column that names a blob key: an update's blob (its sha256 is the same key,
    # kept too so a disagreement errs on keeping), a model version's bundle, and a
    # round's server-optimiser state.

    async def blob_keys(self) -> set[str]:
        """Every blob key a row references (the start-up sweep keeps exactly these)."""
        updates = await self.session.execute(select(UpdateRow.blob, UpdateRow.sha256))
        keys = {key for row in updates for key in row}
        states = await self.session.scalars(
            select(RoundRow.server_state).where(RoundRow.server_state.is_not(None))
        )
        return keys | await self.bundle_keys() | {key for key in states.all() if key}

    async def blob_in_use(self, key: str) -> bool:
        """Whether any row references blob ``key``."""
        update = await self.session.scalar(
            select(UpdateRow.id).where((UpdateRow.blob == key) | (UpdateRow.sha256 == key)).limit(1)
        )
        if update is not None:
            return True
        bundle = await self.session.scalar(
            select(ModelVersionRow.version).where(ModelVersionRow.bundle == key).limit(1)
        )
        if bundle is not None:
            return True
        state = await self.session.scalar(
            select(RoundRow.id).where(RoundRow.server_state == key).limit(1)
        )
        return state is not None

    # --- audit -------------------------------------------------------------------------

    async def audit(
        self, *, actor: str, action: str, target: str, now: datetime, **detail: Any
    ) -> None:
        """Append one audit event."""
        self.session.add(
            AuditEventRow(at=now, actor=actor, action=action, target=target, detail=detail)
        )
        await self.session.flush()
        self.audited = True

    async def seal_audit(self) -> int:
        """Chain the unsealed events, oldest first; returns how many were sealed.

        The head row is locked first (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite
        the transaction already holds the write lock), so sealers run one at a time
        and each continues where the last stopped. Events of transactions that commit
        late are sealed by a later call: the chain's order is ``seq``, not ``id``.
        """
        head = await self.session.scalar(
            select(AuditChainRow).where(AuditChainRow.id == 1).with_for_update()
        )
        if head is None:
            head = AuditChainRow(id=1, seq=0, hash=GENESIS_HASH)
            self.session.add(head)
        rows = (
            await self.session.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.hash.is_(None))
                .order_by(AuditEventRow.id)
                .limit(SEAL_BATCH)
            )
        ).all()
        for row in rows:
            row.seq, row.prev_hash = head.seq + 1, head.hash
            row.hash = audit_digest(row)
            head.seq, head.hash = row.seq, row.hash
        await self.session.flush()
        return len(rows)

    async def audit_head(self) -> AuditChainRow | None:
        """The chain's head: the last sealed event's ``seq`` and hash."""
        return await self.session.get(AuditChainRow, 1)

    async def sealed_audit_events(self, *, after_seq: int, limit: int) -> Sequence[AuditEventRow]:
        """Sealed events with ``seq`` > ``after_seq``, in chain order."""
        return (
            await self.session.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.seq > after_seq)
                .order_by(AuditEventRow.seq)
                .limit(limit)
            )
        ).all()

    async def count_unsealed_audit_events(self) -> int:
        """Events not yet in the chain (their transaction committed after the last seal)."""
        count = await self.session.scalar(
            select(func.count()).select_from(AuditEventRow).where(AuditEventRow.hash.is_(None))
        )
        return int(count or 0)

    async def audit_events(
        self, *, limit: int, after: int, newest: bool = False
    ) -> Sequence[AuditEventRow]:
        """Audit events with id > ``after``: the first ``limit`` of them, or the newest."""
        order = AuditEventRow.id.desc() if newest else AuditEventRow.id
        return (
            await self.session.scalars(
                select(AuditEventRow).where(AuditEventRow.id > after).order_by(order).limit(limit)
            )
        ).all()


# --- rows -> wire schemas --------------------------------------------------------------


def site_info(row: SiteRow) -> SiteInfo:
    """A site as the admin sees it."""
    status = row.status if row.status in ("pending", "active", "revoked") else "pending"
    return SiteInfo(
        name=row.name,
        status=status,
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        enrolled_at=row.enrolled_at,
        last_seen_at=row.last_seen_at,
    )


def run_config(row: RunRow) -> RunConfig:
    """The validated configuration of a run."""
    return RunConfig.model_validate(row.config)


def run_info(row: RunRow) -> RunInfo:
    """A run as the admin sees it."""
    return RunInfo.model_validate(
        {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "config": row.config,
            "current_round": row.current_round,
            "created_at": row.created_at,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
        }
    )


def model_version_info(row: ModelVersionRow) -> ModelVersion:
    """A model version on the wire."""
    return ModelVersion(
        run_id=row.run_id,
        version=row.version,
        weights_sha256=row.weights_sha256,
        created_at=row.created_at,
    )


def audit_event_info(row: AuditEventRow) -> AuditEvent:
    """An audit event on the wire."""
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        detail=dict(row.detail),
    )


def token_info(row: AdminTokenRow, now: datetime) -> TokenInfo:
    """An admin or viewer token as the admin sees it: never its secret or hash."""
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return TokenInfo.model_validate(
        {
            "id": row.id,
            "role": row.role,
            "label": row.label,
            "status": status,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "revoked_at": row.revoked_at,
        }
    )


def audit_digest(row: AuditEventRow) -> str:
    """SHA-256 of the canonical JSON of an event, its place in the chain and the previous hash.

    Every column but ``hash`` itself is covered, so editing any of them, or moving,
    deleting or inserting an event, breaks the chain from there on.
    """
    body = {
        "seq": row.seq,
        "prev_hash": row.prev_hash,
        "id": row.id,
        "at": row.at.astimezone(UTC).isoformat(),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "detail": row.detail,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()
