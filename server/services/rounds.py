"""The round lifecycle: open, settle, close, end, resume. Intake is `intake` and `declines`.

Statuses move only through `transitions.change_status`. One `LiveRound` per open
round holds the round key and the running weighted sum; everything it holds can be
rebuilt from the database, the blob store and the round key file, which is what
`resume` does after a restart. An update counts only once its blob is durable and
its row committed; it is added to the sum after the commit, so a crash between the
two is repaired by `resume` and nothing is counted twice.

When a round is decided, given its uploads, declines and deadline, is `settling`'s
verdict; `decide` acts on it (close, fail, or end the run ``budget_exhausted``).

Closing is retryable: the consensus (`closing`: the live sum, or the run's strategy
over the stored updates) is computed without spending the sum or the optimiser
state, and nothing is committed until the bundle is stored, so a close that fails
half-way (``aggregating`` in the database) is simply done again by the next tick.

A single server process owns the rounds (per-round asyncio locks serialise the
sum, the close and a stop); run one process per database.
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import datetime, timedelta

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from server.db.declines import declines_of_round
from server.db.engine import Database
from server.db.models import RoundRow, RunRow
from server.db.repositories import Repository, run_config
from server.metrics import Metrics
from server.services import closing
from server.services.auth import now
from server.services.events import Notifier
from server.services.keys import RoundKeys
from server.services.live import LiveRound, live_round, version_row
from server.services.participants import round_sample
from server.services.publishing import load_bundle
from server.services.transitions import change_status, run_finished
from server.storage import BlobStore
from shared import crypto
from shared.bundle import Bundle
from shared.errors import Conflict, NotFound
from shared.schemas import RoundStatus, RunConfig, RunStatus

log = logging.getLogger(__name__)


async def find_run(repo: Repository, run_id: str) -> RunRow:
    """The run with this id; `NotFound` (``unknown_run``) when there is none."""
    run = await repo.run(run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist", code="unknown_run")
    return run


class Coordinator:
    """Owns the live rounds: opens, settles, closes, ends and resumes them."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        keys: RoundKeys,
        signing_key: Ed25519PrivateKey,
        metrics: Metrics,
        notifier: Notifier,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._keys = keys
        self._signing_key = signing_key
        self._metrics = metrics
        self._notifier = notifier
        self._live: dict[int, LiveRound] = {}
        self._bundles: dict[str, Bundle] = {}

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

    def is_live(self, live: LiveRound) -> bool:
        """Whether ``live`` is still the open round it was (not closed or ended since)."""
        return self._live.get(live.round_id) is live

    def require_open(self, row: RoundRow, live: LiveRound) -> None:
        """Under the round lock, before a write: `Conflict` (``round_closed``) unless open."""
        if row.status != RoundStatus.OPEN or not self.is_live(live):
            raise Conflict(f"round {live.number} is {row.status}", code="round_closed")

    def _live_of_run(self, run_id: str) -> LiveRound | None:
        return next((item for item in self._live.values() if item.run_id == run_id), None)

    # --- a run begins and ends ---------------------------------------------------------

    async def begin_run(self, run_id: str, bundle: Bundle, actor: str) -> None:
        """Record version 0 (stored already), open round 1 and mark the run running."""
        moment = now()
        key = self._keys.create(run_id, 1)
        try:
            async with self._db.transaction() as repo:
                run = await find_run(repo, run_id)
                config = run_config(run)
                await repo.add_model_version(version_row(bundle, moment))
                members = {site.id: site.name for site in await repo.run_sites(run_id)}
                row = await self._open_round(repo, run_id, 1, config, members, bundle, key, moment)
                change_status(run, RunStatus.RUNNING, at=moment)
                run.current_round = 1
                await repo.audit(
                    actor=actor, action="run.started", target=f"run:{run_id}", now=moment
                )
        except BaseException:
            self._keys.delete(run_id, 1)
            raise
        self._bundles[run_id] = bundle
        self._live[row.id] = live_round(row, config, members, key, bundle)
        self._notifier.notify()

    async def cancel_run(self, run_id: str, actor: str) -> None:
        """Cancel a run and its open round; `Conflict` (``run_state``) once it is finished.

        The live round is looked up again under its lock: a close that held the lock
        may have decided it (and opened the next one, or finished the run) meanwhile.
        """
        while True:
            live = self._live_of_run(run_id)
            if live is None:
                await self._end_run(run_id, RunStatus.CANCELLED, actor, "run stopped")
                return
            async with live.lock:
                if self.is_live(live):
                    await self._end(live, RoundStatus.CANCELLED, actor, "run stopped")
                    return

    async def _open_round(
        self,
        repo: Repository,
        run_id: str,
        number: int,
        config: RunConfig,
        members: dict[int, str],
        bundle: Bundle,
        key: X25519PrivateKey,
        moment: datetime,
    ) -> RoundRow:
        """Add round ``number``, open, with its sample of ``members`` on record."""
        sample = round_sample(config, members.values(), run_id=run_id, round_number=number)
        row = await repo.add_round(
            RoundRow(
                run_id=run_id,
                number=number,
                status=RoundStatus.OPEN.value,
                opened_at=moment,
                deadline=moment + timedelta(seconds=config.round_timeout_s),
                weights_sha256=bundle.manifest.weights_sha256,
                public_key=base64.b64encode(crypto.public_bytes(key.public_key())).decode(),
                participants=sample,
            )
        )
        detail = {} if sample is None else {"participants": sample}
        target = f"run:{run_id}/round:{number}"
        await repo.audit(actor="server", action="round.opened", target=target, now=moment, **detail)
        return row

    # --- settling ----------------------------------------------------------------------

    async def settle(self, live: LiveRound) -> None:
        """Decide the round if its uploads, declines or deadline say so (`decide`)."""
        async with live.lock:
            if self.is_live(live):
                await self.decide(live)

    async def decide(self, live: LiveRound) -> None:
        """Caller holds ``live.lock``: close, end or keep the round, as its verdict says.

        A round below a quorum it can no longer reach fails; one that cannot close
        because every site left out declined for budget ends the run ``budget_exhausted``
        (the round is cancelled: it was called off, nothing went wrong).
        """
        verdict = live.verdict(now())
        if verdict.outcome == "close":
            await self.close(live)
        elif verdict.outcome == "fail":
            await self._end(live, RoundStatus.FAILED, "server", verdict.reason)
        elif verdict.outcome == "budget_exhausted":
            await self._end(
                live,
                RoundStatus.CANCELLED,
                "server",
                verdict.reason,
                run_status=RunStatus.BUDGET_EXHAUSTED,
            )

    async def tick(self) -> None:
        """Called periodically: settle every round whose verdict is no longer to wait."""
        moment = now()
        for live in list(self._live.values()):
            if live.verdict(moment).outcome != "wait":
                try:
                    await self.settle(live)
                except Exception:
                    log.exception("settling round %s/%s failed", live.run_id, live.number)

    async def close(self, live: LiveRound) -> None:
        """Caller holds ``live.lock``: sign the consensus, store it, open the next round.

        Retryable: the sum is only read, an optimiser's state is loaded from the
        previous round each time (`closing`), and nothing is committed before the
        bundle is stored, so after a failure anywhere the next call starts over.
        """
        started = time.perf_counter()
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            if row.status != RoundStatus.AGGREGATING:  # a retried close is aggregating already
                change_status(row, RoundStatus.AGGREGATING, at=now())
        base = self._bundles.get(live.run_id)
        if base is None or base.version != live.number - 1:
            base = await load_bundle(self._db, self._blobs, live.run_id, live.number - 1)
        closed = await closing.consensus(self._db, self._blobs, self._signing_key, live, base)
        bundle = closed.bundle
        await to_thread.run_sync(self._blobs.put_bytes, bundle.data, bundle.sha256)
        last = live.number >= live.config.rounds
        next_key = None if last else self._keys.create(live.run_id, live.number + 1)
        moment = now()
        try:
            async with self._db.transaction() as repo:
                next_row = await self._commit_close(repo, live, closed, next_key, moment)
        except BaseException:
            if next_key is not None:
                self._keys.delete(live.run_id, live.number + 1)
            raise
        self._keys.delete(live.run_id, live.number)
        del self._live[live.round_id]
        if next_row is not None and next_key is not None:
            self._bundles[live.run_id] = bundle
            self._live[next_row.id] = live_round(
                next_row, live.config, live.members, next_key, bundle
            )
        else:
            self._bundles.pop(live.run_id, None)
        self._metrics.rounds_closed.inc()
        self._metrics.aggregation_seconds.observe(time.perf_counter() - started)
        self._notifier.notify()

    async def _commit_close(
        self,
        repo: Repository,
        live: LiveRound,
        closed: closing.Consensus,
        next_key: X25519PrivateKey | None,
        moment: datetime,
    ) -> RoundRow | None:
        bundle = closed.bundle
        row = await repo.round(live.run_id, live.number)
        run = await repo.run(live.run_id)
        assert row is not None and run is not None
        change_status(row, RoundStatus.CLOSED, at=moment)
        row.server_state = closed.server_state
        await repo.add_model_version(version_row(bundle, moment))
        await repo.audit(
            actor="server",
            action="round.closed",
            target=f"run:{live.run_id}/round:{live.number}",
            now=moment,
            updates=len(live.counted),
            total_weight=live.accumulator.total_weight,
            weights_sha256=bundle.manifest.weights_sha256,
            **closed.detail,
        )
        if next_key is None:
            change_status(run, RunStatus.COMPLETED, at=moment)
            await repo.audit(
                actor="server", action="run.completed", target=f"run:{run.id}", now=moment
            )
            return None
        run.current_round = live.number + 1
        return await self._open_round(
            repo, live.run_id, live.number + 1, live.config, live.members, bundle, next_key, moment
        )

    async def _end(
        self,
        live: LiveRound,
        status: RoundStatus,
        actor: str,
        reason: str,
        *,
        run_status: RunStatus | None = None,
    ) -> None:
        """Caller holds ``live.lock``: fail or cancel the round and end its run.

        The run fails with a failed round and is cancelled with a cancelled one,
        unless ``run_status`` says otherwise (``budget_exhausted``).
        """
        moment = now()
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            change_status(row, status, at=moment)
            await repo.audit(
                actor=actor,
                action=f"round.{status}",
                target=f"run:{live.run_id}/round:{live.number}",
                now=moment,
                reason=reason,
            )
        self._keys.delete(live.run_id, live.number)
        self._live.pop(live.round_id, None)
        if status == RoundStatus.FAILED:
            self._metrics.rounds_failed.inc()
        if run_status is None:
            failed = status == RoundStatus.FAILED
            run_status = RunStatus.FAILED if failed else RunStatus.CANCELLED
        await self._end_run(live.run_id, run_status, actor, reason)

    async def _end_run(self, run_id: str, status: RunStatus, actor: str, reason: str) -> None:
        moment = now()
        async with self._db.transaction() as repo:
            run = await find_run(repo, run_id)
            if run_finished(run.status):
                raise Conflict(f"run {run_id} is already {run.status}", code="run_state")
            change_status(run, status, at=moment)
            action = "run.stopped" if status == RunStatus.CANCELLED else f"run.{status}"
            await repo.audit(
                actor=actor, action=action, target=f"run:{run_id}", now=moment, reason=reason
            )
        self._bundles.pop(run_id, None)
        self._notifier.notify()

    # --- restart -----------------------------------------------------------------------

    async def resume(self) -> None:
        """Rebuild every undecided round from the database, blobs and key files."""
        async with self._db.transaction() as repo:
            plans = []
            for row in list(await repo.active_rounds()):
                run = await repo.run(row.run_id)
                assert run is not None
                members = {site.id: site.name for site in await repo.run_sites(row.run_id)}
                updates = list(await repo.updates_of_round(row.id))
                declined = {
                    item.site_id: item.reason for item in await declines_of_round(repo, row.id)
                }
                if row.status == RoundStatus.AGGREGATING:
                    change_status(row, RoundStatus.OPEN, at=now())
                plans.append((row, run_config(run), members, updates, declined))
        self._keys.sweep({(row.run_id, row.number) for row, *_ in plans})
        for row, config, members, updates, declined in plans:
            key = self._keys.load(row.run_id, row.number)
            bundle = await load_bundle(self._db, self._blobs, row.run_id, row.number - 1)
            if key is None:
                live = live_round(row, config, members, crypto.generate_sealing_key(), bundle)
                async with live.lock:
                    await self._end(live, RoundStatus.FAILED, "server", "the round key was lost")
                continue
            live = live_round(row, config, members, key, bundle)
            for update in updates:
                tensors = await to_thread.run_sync(closing.reopen, self._blobs, update.blob, key)
                live.accumulator.add(tensors, float(update.num_samples))
                live.counted.add(update.site_id)
                self._metrics.record_epsilon(
                    row.run_id, members.get(update.site_id), update.privacy
                )
            live.declined.update(declined)
            self._live[row.id] = live
            self._bundles[row.run_id] = bundle
            log.info(
                "resumed round %s/%s with %d updates and %d declines",
                row.run_id,
                row.number,
                len(live.counted),
                len(live.declined),
            )
        await self.tick()
