"""Update intake: precheck, header check, receive, verify, open, commit, count, replay.

Cheapest first, so a bad upload costs the server as little as possible: the size
declared, then who may send to which round (a read that does not queue behind
commits), then the clear-text header at the front of the stream (`check_header`:
site, run, round, base model, sample count against the run's cap, the ε ledger entry
against the run's mechanism), and only then is the body received, its signature
checked, its payload decrypted and the delta's L2 norm checked against the run's
clip (`norms`). The blob is stored only after every check has passed, so a refused
update leaves nothing behind. An update counts once its blob is durable and its row
committed (see `rounds`). When the row is not committed after all (a failing insert,
a round closed meanwhile), its blob is removed again unless a committed row or another
upload in flight names the same key; what a crash leaves, the start-up sweep removes
(`blob_sweep`); `pending_blobs` decides.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.db.declines import decline_of
from server.db.engine import Database
from server.db.models import UpdateRow
from server.db.repositories import run_config
from server.metrics import Metrics
from server.services.auth import Principal, now
from server.services.envelopes import ReceivedBody, peek_header, receive_body, verify_signature
from server.services.headers import check_header
from server.services.live import LiveRound
from server.services.norms import check_norm
from server.services.participants import require_participant
from server.services.pending_blobs import PendingBlobs
from server.services.rounds import Coordinator, find_run
from server.storage import BlobStore
from shared import crypto
from shared.arrays import Arrays, from_safetensors, validate_arrays
from shared.errors import (
    Conflict,
    FedsegError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)
from shared.schemas import RoundStatus, RunConfig, RunStatus, UpdateHeader, UpdateReceipt
from shared.updates import read_envelope_header, unseal_envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How much the server accepts, how many updates it opens at once, where models build."""

    max_bytes: int
    verify_concurrency: int = 1
    build_models_in_subprocess: bool = False


@dataclass(frozen=True, slots=True)
class Slot:
    """What the precheck found: the round's base model, the site's key, a prior update."""

    base_weights_sha256: str
    site_key: Ed25519PublicKey
    existing: UpdateRow | None
    config: RunConfig


class UpdateIntake:
    """Takes sealed updates for the live rounds the `Coordinator` owns."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        rounds: Coordinator,
        metrics: Metrics,
        limits: UploadLimits,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._rounds = rounds
        self._metrics = metrics
        self._limits = limits
        self._verify = asyncio.Semaphore(limits.verify_concurrency)
        self._pending = PendingBlobs(db, blobs)

    async def accept_update(
        self,
        site: Principal,
        run_id: str,
        number: int,
        chunks: AsyncIterator[bytes],
        declared: int | None,
    ) -> UpdateReceipt:
        """Check, store, commit and count one sealed update; idempotent per site and round."""
        site_id = site.require_site()
        if declared is not None and declared > self._limits.max_bytes:
            self._metrics.updates_rejected.labels(code="payload_too_large").inc()
            raise PayloadTooLarge(f"update is larger than {self._limits.max_bytes} bytes")
        try:
            return await self._accept(site, site_id, run_id, number, chunks, declared)
        except FedsegError as exc:
            self._metrics.updates_rejected.labels(code=exc.code).inc()
            await self._audit_rejection(site, run_id, number, exc)
            raise

    async def _accept(
        self,
        site: Principal,
        site_id: int,
        run_id: str,
        number: int,
        chunks: AsyncIterator[bytes],
        declared: int | None,
    ) -> UpdateReceipt:
        slot = await self._precheck(site_id, run_id, number)
        limit = self._limits.max_bytes
        header, whole = await peek_header(chunks, declared=declared, limit=limit)
        check_header(
            header,
            site=site.name,
            run_id=run_id,
            number=number,
            base_weights_sha256=slot.base_weights_sha256,
            config=slot.config,
        )
        temp = self._blobs.new_temp_path()
        try:
            body = await receive_body(whole, temp, limit=limit, declared=declared)
            self._metrics.bytes_in.inc(body.size)
            if slot.existing is not None:
                return _replay(slot.existing, body, run_id, number, site.name)
            live = self._rounds.live_round(run_id, number)
            if live is None:
                raise Conflict(f"round {number} of {run_id} is closed", code="round_closed")
            # One plaintext in memory per permit: the permit is held until the update is
            # in the sum, so memory stays O(model) however many uploads arrive at once.
            async with self._verify:
                tensors = await to_thread.run_sync(_open, body, slot.site_key, live)
                with self._pending.storing(body.sha256):
                    await to_thread.run_sync(self._blobs.put_file, temp, body.sha256)
                    async with live.lock:
                        return await self._commit(live, site, site_id, body, header, tensors)
        finally:
            temp.unlink(missing_ok=True)

    async def _precheck(self, site_id: int, run_id: str, number: int) -> Slot:
        """Run, membership, round state and a prior update: a read, before any body byte."""
        for attempt in range(2):
            async with self._db.read() as repo:
                run = await find_run(repo, run_id)
                if not await repo.is_member(run_id, site_id):
                    raise Forbidden(f"this site is not a member of run {run_id}")
                row = await repo.round(run_id, number)
                if row is None:
                    config = run.config.get("rounds", 0)
                    if 1 <= number <= config and run.status in (
                        RunStatus.CREATED,
                        RunStatus.RUNNING,
                    ):
                        raise Conflict(f"round {number} is not open yet", code="round_not_open")
                    raise NotFound(f"run {run_id} has no round {number}", code="unknown_round")
                existing = await repo.update_of(row.id, site_id)
                site_row = await repo.site_by_id(site_id)
                assert site_row is not None and site_row.signing_public_key is not None
                assert row.weights_sha256 is not None
                slot = Slot(
                    base_weights_sha256=row.weights_sha256,
                    site_key=crypto.ed25519_public_from_bytes(
                        base64.b64decode(site_row.signing_public_key)
                    ),
                    existing=existing,
                    config=run_config(run),
                )
                if existing is not None:
                    return slot
                require_participant(row, site_row.name)
                if await decline_of(repo, row.id, site_id) is not None:
                    raise _declined(number)
                if row.status == RoundStatus.CREATED:
                    raise Conflict(f"round {number} is not open yet", code="round_not_open")
                if row.status != RoundStatus.OPEN:
                    raise Conflict(
                        f"round {number} of {run_id} is {row.status}", code="round_closed"
                    )
                deadline_passed = row.deadline is not None and row.deadline <= now()
            live = self._rounds.live_round(run_id, number)
            if not deadline_passed or live is None or attempt:
                return slot
            await self._rounds.settle(live)  # the deadline passed: decide the round first
        raise AssertionError("unreachable")

    async def _commit(
        self,
        live: LiveRound,
        site: Principal,
        site_id: int,
        body: ReceivedBody,
        header: UpdateHeader,
        tensors: Arrays,
    ) -> UpdateReceipt:
        """Under the round lock: re-check, insert, commit, then add to the sum.

        Until the row is committed, a failure removes the stored blob again.
        """
        moment = now()
        try:
            replay = await self._insert(live, site, site_id, body, header, moment)
        except Exception:
            await self._pending.discard(body.sha256)
            raise
        if replay is not None:
            return replay
        # numpy releases the GIL: off the event loop, which is busy receiving other bodies
        await to_thread.run_sync(live.accumulator.add, tensors, float(header.num_samples))
        live.counted.add(site_id)
        self._metrics.updates_accepted.inc()
        if header.privacy is not None:
            self._metrics.record_epsilon(
                live.run_id, site.name, header.privacy.model_dump(mode="json")
            )
        receipt = UpdateReceipt(
            run_id=live.run_id,
            round=live.number,
            site=site.name,
            update_sha256=body.sha256,
            received_at=moment,
        )
        try:
            await self._rounds.decide(live)  # closes the round once it is complete
        except Exception:  # the update is safe; the ticker retries the close
            log.exception("closing round %s/%s failed", live.run_id, live.number)
        return receipt

    async def _insert(
        self,
        live: LiveRound,
        site: Principal,
        site_id: int,
        body: ReceivedBody,
        header: UpdateHeader,
        moment: datetime,
    ) -> UpdateReceipt | None:
        """Re-check the slot, insert the row and its audit event, commit; a replay's receipt."""
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            existing = await repo.update_of(row.id, site_id)
            if existing is not None:
                return _replay(existing, body, live.run_id, live.number, site.name)
            if await decline_of(repo, row.id, site_id) is not None:
                raise _declined(live.number)
            self._rounds.require_open(row, live)
            await repo.add_update(
                UpdateRow(
                    round_id=row.id,
                    site_id=site_id,
                    sha256=body.sha256,
                    size=body.size,
                    num_samples=header.num_samples,
                    metrics=dict(header.metrics),
                    blob=body.sha256,
                    received_at=moment,
                    privacy=(
                        None if header.privacy is None else header.privacy.model_dump(mode="json")
                    ),
                )
            )
            await repo.audit(
                actor=site.actor,
                action="update.accepted",
                target=f"run:{live.run_id}/round:{live.number}",
                now=moment,
                sha256=body.sha256,
                num_samples=header.num_samples,
                **(
                    {}
                    if header.privacy is None
                    else {"cumulative_epsilon": header.privacy.cumulative_epsilon}
                ),
            )
        return None

    async def _audit_rejection(
        self, site: Principal, run_id: str, number: int, exc: FedsegError
    ) -> None:
        try:
            async with self._db.transaction() as repo:
                await repo.audit(
                    actor=site.actor,
                    action="update.rejected",
                    target=f"run:{run_id}/round:{number}",
                    now=now(),
                    code=exc.code,
                    message=exc.message[:500],
                )
        except Exception:  # auditing must not hide the real error
            log.exception("could not audit a rejected update")


def _open(body: ReceivedBody, site_key: Ed25519PublicKey, live: LiveRound) -> Arrays:
    """Signature, decryption, tensors against the round's spec, the norm: in that order."""
    verify_signature(body, site_key)
    with body.path.open("rb") as handle:
        envelope = read_envelope_header(handle, body.size)
        payload = unseal_envelope(handle, envelope, live.private_key)
    tensors = from_safetensors(payload)
    validate_arrays(tensors, live.spec)
    check_norm(tensors, live.norm_bound)
    return tensors


def _declined(number: int) -> Conflict:
    """A site that declined a round cannot also be counted in it."""
    return Conflict(f"this site declined round {number}", code="decline_conflict")


def _replay(
    existing: UpdateRow, body: ReceivedBody, run_id: str, number: int, site: str
) -> UpdateReceipt:
    """Same bytes again: the same receipt. Other bytes for a filled slot: 409."""
    if existing.sha256 != body.sha256:
        raise Conflict(
            f"this site already sent a different update for round {number}",
            code="update_conflict",
        )
    return UpdateReceipt(
        run_id=run_id,
        round=number,
        site=site,
        update_sha256=existing.sha256,
        received_at=existing.received_at,
    )
