"""The round state machine, update intake and streaming aggregation.

States: created -> open -> aggregating -> closed, or failed (quorum missed at the
deadline) or cancelled (run stopped). One `LiveRound` per open round holds the
round key and the running weighted sum; everything it holds can be rebuilt from
the database, the blob store and the round key file, which is what `resume`
does after a restart. An update counts only once its blob is durable and its row
committed; it is added to the sum after the commit, so a crash between the two is
repaired by `resume` and nothing is counted twice.

A single server process owns the rounds (per-round asyncio locks serialise the
sum and the close); run one process per database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from server.db.engine import Database
from server.db.models import ModelVersionRow, RoundRow, RunRow, UpdateRow
from server.db.repositories import Repository, run_config
from server.metrics import Metrics
from server.services.aggregation import Accumulator
from server.services.auth import Principal, now
from server.services.envelopes import (
    EnvelopeHeader,
    ReceivedBody,
    open_payload,
    read_header,
    receive_body,
    verify_signature,
)
from server.services.events import Notifier
from server.services.keys import RoundKeys
from server.services.model_worker import build_in_worker
from server.services.publishing import build_bundle, initial_weights, stored_bundle
from server.storage import BlobStore
from shared import crypto
from shared.arrays import Arrays, from_safetensors, to_safetensors, validate_arrays
from shared.bundle import Bundle
from shared.errors import (
    Conflict,
    FedsegError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TensorError,
    Unavailable,
)
from shared.schemas import RunConfig, TensorSpec, UpdateReceipt
from shared.updates import parse_envelope, unseal_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How much the server accepts, how many updates it opens at once, where models build."""

    max_bytes: int
    verify_concurrency: int = 1
    build_models_in_subprocess: bool = False


@dataclass(slots=True)
class LiveRound:
    """An open round in memory: its key, the model it trains from and the running sum."""

    round_id: int
    run_id: str
    number: int
    config: RunConfig
    members: dict[int, str]
    private_key: X25519PrivateKey
    base_weights_sha256: str
    spec: list[TensorSpec]
    deadline: datetime
    accumulator: Accumulator
    counted: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def complete(self) -> bool:
        """Every member site's update is in the sum."""
        return len(self.counted) == len(self.members)


async def find_run(repo: Repository, run_id: str) -> RunRow:
    """The run with this id; `NotFound` (``unknown_run``) when there is none."""
    run = await repo.run(run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist", code="unknown_run")
    return run


class Coordinator:
    """Owns the live rounds: starts runs, takes updates, closes, fails and resumes rounds."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        keys: RoundKeys,
        signing_key: Ed25519PrivateKey,
        metrics: Metrics,
        notifier: Notifier,
        limits: UploadLimits,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._keys = keys
        self._signing_key = signing_key
        self._metrics = metrics
        self._notifier = notifier
        self._limits = limits
        self._live: dict[int, LiveRound] = {}
        self._bundles: dict[str, Bundle] = {}
        self._verify = asyncio.Semaphore(limits.verify_concurrency)
        self._lifecycle = asyncio.Lock()

    # --- queries -----------------------------------------------------------------------

    def cached_bundle(self, run_id: str, version: int) -> Bundle | None:
        """The in-memory bundle of a running run, when it is that version."""
        bundle = self._bundles.get(run_id)
        return bundle if bundle is not None and bundle.version == version else None

    def live_round(self, run_id: str, number: int) -> LiveRound | None:
        """The open round ``number`` of a run, if it is open in this process."""
        for live in self._live.values():
            if live.run_id == run_id and live.number == number:
                return live
        return None

    # --- run lifecycle -----------------------------------------------------------------

    async def start_run(self, run_id: str, actor: Principal) -> None:
        """Build and sign model version 0, then open round 1."""
        actor.require_admin()
        async with self._lifecycle:
            async with self._db.transaction() as repo:
                run = await find_run(repo, run_id)
                if run.status != "created":
                    raise Conflict(f"run {run_id} is {run.status}, not created", code="run_state")
                config = run_config(run)
                revoked = [
                    site.name for site in await repo.run_sites(run_id) if site.status == "revoked"
                ]
            if revoked:
                raise Conflict(f"sites {', '.join(revoked)} are revoked", code="run_state")
            bundle = await self._initial_bundle(run_id, config)
            await to_thread.run_sync(self._blobs.put_bytes, bundle.data, bundle.sha256)
            moment = now()
            key = self._keys.create(run_id, 1)
            try:
                async with self._db.transaction() as repo:
                    started = await repo.run(run_id)
                    assert started is not None
                    await repo.add_model_version(_version_row(bundle, moment))
                    row = await self._open_round(repo, run_id, 1, config, bundle, key, moment)
                    started.status, started.started_at, started.current_round = "running", moment, 1
                    await repo.audit(
                        actor=actor.actor, action="run.started", target=f"run:{run_id}", now=moment
                    )
                    members = {site.id: site.name for site in await repo.run_sites(run_id)}
            except BaseException:
                self._keys.delete(run_id, 1)
                raise
            self._bundles[run_id] = bundle
            self._live[row.id] = _live_round(row, config, members, key, bundle)
        self._notifier.notify()

    async def _initial_bundle(self, run_id: str, config: RunConfig) -> Bundle:
        """Round-0 weights, built in a child process when so configured, then signed."""
        if self._limits.build_models_in_subprocess:
            temp = self._blobs.new_temp_path()
            try:
                await build_in_worker(config, temp)
                weights = await to_thread.run_sync(temp.read_bytes)
            finally:
                temp.unlink(missing_ok=True)
        else:
            weights = await to_thread.run_sync(initial_weights, config)
        return await to_thread.run_sync(
            lambda: build_bundle(
                run_id=run_id,
                version=0,
                config=config,
                weights=weights,
                signing_key=self._signing_key,
            )
        )

    async def _open_round(
        self,
        repo: Repository,
        run_id: str,
        number: int,
        config: RunConfig,
        bundle: Bundle,
        key: X25519PrivateKey,
        moment: datetime,
    ) -> RoundRow:
        row = await repo.add_round(
            RoundRow(
                run_id=run_id,
                number=number,
                status="open",
                opened_at=moment,
                deadline=moment + timedelta(seconds=config.round_timeout_s),
                weights_sha256=bundle.manifest.weights_sha256,
                public_key=base64.b64encode(crypto.public_bytes(key.public_key())).decode(),
            )
        )
        await repo.audit(
            actor="server", action="round.opened", target=f"run:{run_id}/round:{number}", now=moment
        )
        return row

    async def stop_run(self, run_id: str, actor: Principal) -> None:
        """Cancel a created or running run and its open round."""
        actor.require_admin()
        async with self._lifecycle:
            async with self._db.transaction() as repo:
                run = await find_run(repo, run_id)
                if run.status not in ("created", "running"):
                    raise Conflict(f"run {run_id} is already {run.status}", code="run_state")
            live = next((item for item in self._live.values() if item.run_id == run_id), None)
            if live is not None:
                async with live.lock:
                    await self._end(live, "cancelled", actor.actor, "run stopped")
            else:
                await self._end_run(run_id, "cancelled", actor.actor, "run stopped")
        self._notifier.notify()

    # --- updates -----------------------------------------------------------------------

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
        existing, site_key = await self._precheck(site_id, run_id, number)
        temp = self._blobs.new_temp_path()
        try:
            body = await receive_body(chunks, temp, limit=self._limits.max_bytes, declared=declared)
            self._metrics.bytes_in.inc(body.size)
            if existing is not None:
                return _replay(existing, body, run_id, number, site.name)
            envelope = read_header(body)
            _check_header(envelope, site.name, run_id, number)
            live = self.live_round(run_id, number)
            if live is None:
                raise Conflict(f"round {number} of {run_id} is closed", code="round_closed")
            # One plaintext in memory per permit: the permit is held until the update is
            # in the sum, so memory stays O(model) however many uploads arrive at once.
            async with self._verify:
                tensors = await to_thread.run_sync(self._open, body, envelope, site_key, live)
                await to_thread.run_sync(self._blobs.put_file, temp, body.sha256)
                async with live.lock:
                    return await self._commit(live, site, site_id, body, envelope, tensors)
        finally:
            temp.unlink(missing_ok=True)

    async def _precheck(
        self, site_id: int, run_id: str, number: int
    ) -> tuple[UpdateRow | None, Ed25519PublicKey]:
        """Cheap checks before any body byte is read: run, membership, round state."""
        for attempt in range(2):
            async with self._db.transaction() as repo:
                run = await find_run(repo, run_id)
                if not await repo.is_member(run_id, site_id):
                    raise Forbidden(f"this site is not a member of run {run_id}")
                row = await repo.round(run_id, number)
                if row is None:
                    if 1 <= number <= run_config(run).rounds and run.status in (
                        "created",
                        "running",
                    ):
                        raise Conflict(f"round {number} is not open yet", code="round_not_open")
                    raise NotFound(f"run {run_id} has no round {number}", code="unknown_round")
                existing = await repo.update_of(row.id, site_id)
                site_row = await repo.site_by_id(site_id)
                assert site_row is not None and site_row.signing_public_key is not None
                site_key = crypto.ed25519_public_from_bytes(
                    base64.b64decode(site_row.signing_public_key)
                )
                if existing is not None:
                    return existing, site_key
                if row.status == "created":
                    raise Conflict(f"round {number} is not open yet", code="round_not_open")
                if row.status != "open":
                    raise Conflict(
                        f"round {number} of {run_id} is {row.status}", code="round_closed"
                    )
                deadline_passed = row.deadline is not None and row.deadline <= now()
            live = self.live_round(run_id, number)
            if not deadline_passed or live is None or attempt:
                return None, site_key
            await self.settle(live)  # the deadline passed: decide the round first
        raise AssertionError("unreachable")

    def _open(
        self,
        body: ReceivedBody,
        envelope: EnvelopeHeader,
        site_key: Ed25519PublicKey,
        live: LiveRound,
    ) -> Arrays:
        """Signature, decryption, tensors, num_samples, base model: in that order."""
        verify_signature(body, site_key)
        tensors = from_safetensors(open_payload(body.path, envelope, live.private_key))
        validate_arrays(tensors, live.spec)
        if envelope.header.num_samples <= 0:
            raise TensorError("num_samples must be positive", code="bad_num_samples")
        if envelope.header.base_weights_sha256 != live.base_weights_sha256:
            raise TensorError(
                "the update was trained from another model than this round's",
                code="base_model_mismatch",
            )
        return tensors

    async def _commit(
        self,
        live: LiveRound,
        site: Principal,
        site_id: int,
        body: ReceivedBody,
        envelope: EnvelopeHeader,
        tensors: Arrays,
    ) -> UpdateReceipt:
        """Under the round lock: re-check, insert, commit, then add to the sum."""
        moment = now()
        header = envelope.header
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            existing = await repo.update_of(row.id, site_id)
            if existing is not None:
                return _replay(existing, body, live.run_id, live.number, site.name)
            if row.status != "open" or self._live.get(live.round_id) is not live:
                raise Conflict(f"round {live.number} is {row.status}", code="round_closed")
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
                )
            )
            await repo.audit(
                actor=site.actor,
                action="update.accepted",
                target=f"run:{live.run_id}/round:{live.number}",
                now=moment,
                sha256=body.sha256,
                num_samples=header.num_samples,
            )
        # numpy releases the GIL: off the event loop, which is busy receiving other bodies
        await to_thread.run_sync(live.accumulator.add, tensors, float(header.num_samples))
        live.counted.add(site_id)
        self._metrics.updates_accepted.inc()
        receipt = UpdateReceipt(
            run_id=live.run_id,
            round=live.number,
            site=site.name,
            update_sha256=body.sha256,
            received_at=moment,
        )
        if live.complete:
            try:
                await self._close(live)
            except Exception:  # the update is safe; the ticker retries the close
                log.exception("closing round %s/%s failed", live.run_id, live.number)
        return receipt

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

    # --- closing -----------------------------------------------------------------------

    async def settle(self, live: LiveRound) -> None:
        """Close a complete round, or decide it at its deadline (quorum or fail)."""
        async with live.lock:
            if self._live.get(live.round_id) is not live:
                return
            if live.complete:
                await self._close(live)
            elif live.deadline <= now():
                if len(live.counted) >= live.config.quorum:
                    await self._close(live)
                else:
                    await self._end(
                        live,
                        "failed",
                        "server",
                        f"{len(live.counted)} of {live.config.quorum} updates by the deadline",
                    )

    async def tick(self) -> None:
        """Called periodically: settle every round that is complete or past its deadline."""
        moment = now()
        for live in list(self._live.values()):
            if live.complete or live.deadline <= moment:
                try:
                    await self.settle(live)
                except Exception:
                    log.exception("settling round %s/%s failed", live.run_id, live.number)

    async def _close(self, live: LiveRound) -> None:
        """Caller holds ``live.lock``: sign the consensus, store it, open the next round."""
        started = time.perf_counter()
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            row.status = "aggregating"
        base = self._bundles.get(live.run_id)
        if base is None or base.version != live.number - 1:
            base = await self._load_bundle(live.run_id, live.number - 1)
        bundle = await to_thread.run_sync(self._consensus, live, base)
        await to_thread.run_sync(self._blobs.put_bytes, bundle.data, bundle.sha256)
        last = live.number >= live.config.rounds
        next_key = None if last else self._keys.create(live.run_id, live.number + 1)
        moment = now()
        target = f"run:{live.run_id}/round:{live.number}"
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            run = await repo.run(live.run_id)
            assert row is not None and run is not None
            row.status, row.closed_at = "closed", moment
            await repo.add_model_version(_version_row(bundle, moment))
            await repo.audit(
                actor="server",
                action="round.closed",
                target=target,
                now=moment,
                updates=len(live.counted),
                total_weight=live.accumulator.total_weight,
                weights_sha256=bundle.manifest.weights_sha256,
            )
            next_row = None
            if next_key is None:
                run.status, run.finished_at = "completed", moment
                await repo.audit(
                    actor="server", action="run.completed", target=f"run:{run.id}", now=moment
                )
            else:
                next_row = await self._open_round(
                    repo, live.run_id, live.number + 1, live.config, bundle, next_key, moment
                )
                run.current_round = live.number + 1
        self._keys.delete(live.run_id, live.number)
        del self._live[live.round_id]
        if next_row is not None and next_key is not None:
            self._bundles[live.run_id] = bundle
            self._live[next_row.id] = _live_round(
                next_row, live.config, live.members, next_key, bundle
            )
        else:
            self._bundles.pop(live.run_id, None)
        self._metrics.rounds_closed.inc()
        self._metrics.aggregation_seconds.observe(time.perf_counter() - started)
        self._notifier.notify()

    def _consensus(self, live: LiveRound, base: Bundle) -> Bundle:
        weights = to_safetensors(live.accumulator.consensus(base.arrays))
        return build_bundle(
            run_id=live.run_id,
            version=live.number,
            config=live.config,
            weights=weights,
            signing_key=self._signing_key,
        )

    async def _end(self, live: LiveRound, status: str, actor: str, reason: str) -> None:
        """Caller holds ``live.lock``: fail or cancel the round and its run."""
        moment = now()
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            row.status, row.closed_at = status, moment
            await repo.audit(
                actor=actor,
                action=f"round.{status}",
                target=f"run:{live.run_id}/round:{live.number}",
                now=moment,
                reason=reason,
            )
        self._keys.delete(live.run_id, live.number)
        self._live.pop(live.round_id, None)
        if status == "failed":
            self._metrics.rounds_failed.inc()
        await self._end_run(live.run_id, status, actor, reason)

    async def _end_run(self, run_id: str, status: str, actor: str, reason: str) -> None:
        moment = now()
        async with self._db.transaction() as repo:
            run = await repo.run(run_id)
            assert run is not None
            run.status, run.finished_at = status, moment
            action = "run.stopped" if status == "cancelled" else f"run.{status}"
            await repo.audit(
                actor=actor, action=action, target=f"run:{run_id}", now=moment, reason=reason
            )
        self._bundles.pop(run_id, None)
        self._notifier.notify()

    async def _load_bundle(self, run_id: str, version: int) -> Bundle:
        async with self._db.transaction() as repo:
            row = await repo.model_version(run_id, version)
        if row is None:
            raise NotFound(f"run {run_id} has no model version {version}")
        try:
            data = await to_thread.run_sync(self._blobs.get_bytes, row.bundle)
        except FileNotFoundError:
            raise Unavailable(f"bundle of {run_id} v{version} is missing from storage") from None
        return stored_bundle(data)

    # --- restart -----------------------------------------------------------------------

    async def resume(self) -> None:
        """Rebuild every undecided round from the database, blobs and key files."""
        async with self._db.transaction() as repo:
            rounds = list(await repo.active_rounds())
            plans = []
            for row in rounds:
                run = await repo.run(row.run_id)
                assert run is not None
                members = {site.id: site.name for site in await repo.run_sites(row.run_id)}
                updates = list(await repo.updates_of_round(row.id))
                if row.status == "aggregating":
                    row.status = "open"
                plans.append((row, run_config(run), members, updates))
        self._keys.sweep({(row.run_id, row.number) for row, *_ in plans})
        for row, config, members, updates in plans:
            key = self._keys.load(row.run_id, row.number)
            bundle = await self._load_bundle(row.run_id, row.number - 1)
            if key is None:
                live = _live_round(row, config, members, crypto.generate_sealing_key(), bundle)
                async with live.lock:
                    await self._end(live, "failed", "server", "the round key was lost")
                continue
            live = _live_round(row, config, members, key, bundle)
            for update in updates:
                data = await to_thread.run_sync(self._blobs.get_bytes, update.blob)
                tensors = await to_thread.run_sync(_reopen, data, key)
                live.accumulator.add(tensors, float(update.num_samples))
                live.counted.add(update.site_id)
            self._live[row.id] = live
            self._bundles[row.run_id] = bundle
            log.info(
                "resumed round %s/%s with %d updates", row.run_id, row.number, len(live.counted)
            )
        await self.tick()


def _reopen(data: bytes, key: X25519PrivateKey) -> Arrays:
    """Decrypt a stored update again (it passed every check when it was accepted)."""
    return from_safetensors(unseal_payload(parse_envelope(data), key))


def _live_round(
    row: RoundRow,
    config: RunConfig,
    members: dict[int, str],
    key: X25519PrivateKey,
    base: Bundle,
) -> LiveRound:
    assert row.deadline is not None
    return LiveRound(
        round_id=row.id,
        run_id=row.run_id,
        number=row.number,
        config=config,
        members=members,
        private_key=key,
        base_weights_sha256=base.manifest.weights_sha256,
        spec=list(base.manifest.tensors),
        deadline=row.deadline,
        accumulator=Accumulator(list(base.manifest.tensors)),
    )


def _version_row(bundle: Bundle, moment: datetime) -> ModelVersionRow:
    return ModelVersionRow(
        run_id=bundle.run_id,
        version=bundle.version,
        weights_sha256=bundle.manifest.weights_sha256,
        bundle=bundle.sha256,
        bundle_size=len(bundle.data),
        created_at=moment,
    )


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


def _check_header(envelope: EnvelopeHeader, site: str, run_id: str, number: int) -> None:
    header = envelope.header
    if header.site != site:
        raise Forbidden(f"the update names site {header.site}, not {site}", code="wrong_site")
    if header.run_id != run_id or header.round != number:
        if header.run_id == run_id and header.round < number:
            raise Conflict(
                f"the update is for round {header.round}, not {number}", code="stale_round"
            )
        raise InvalidInput(
            f"the update is for {header.run_id} round {header.round}, "
            f"but was sent to {run_id} round {number}"
        )
