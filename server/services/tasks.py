"""Work orders for sites: the long-poll for the next signed task, and status reports."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.db.declines import decline_of
from server.db.engine import Database
from server.db.models import RunRow
from server.db.repositories import Repository, run_config
from server.services.auth import Principal, now
from server.services.events import Notifier
from server.services.participants import takes_part
from shared import routes
from shared.aggregation import proximal_mu
from shared.errors import Forbidden, InvalidInput, NotFound
from shared.schemas import StatusReport, Task, TaskPoll
from shared.tasks import sign_task

RETRY_AFTER_S = 2.0


class TaskService:
    """Finds a site's next round to work on and signs it as a task."""

    def __init__(
        self,
        db: Database,
        signing_key: Ed25519PrivateKey,
        notifier: Notifier,
        max_wait_s: float,
        *,
        heartbeat_every_s: float = 5.0,
    ) -> None:
        self._db = db
        self._signing_key = signing_key
        self._notifier = notifier
        self._max_wait_s = max_wait_s
        self._heartbeat_every = timedelta(seconds=heartbeat_every_s)

    async def next_task(self, site: Principal, wait: float) -> TaskPoll:
        """The oldest open round the site still owes (no update, no decline); waits ``wait`` s.

        ``wait`` is clamped to the server's ``max_wait_s``: a client asking for more
        simply polls again sooner, it is never refused.
        """
        site.require_site()
        if wait < 0:
            raise InvalidInput("wait cannot be negative")
        wait = min(wait, self._max_wait_s)  # a longer wait is clamped to the server's limit
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        beat = True  # each poll is a sign of life, recorded in its first read
        while True:
            event = self._notifier.current()
            poll = await self._poll(site, beat=beat)
            beat = False
            remaining = until - loop.time()
            if poll.task is not None or remaining <= 0:
                return poll
            await self._notifier.wait(event, remaining)

    async def _poll(self, site: Principal, *, beat: bool = False) -> TaskPoll:
        assert site.site_id is not None
        seen: datetime | None = None
        async with self._db.read() as repo:  # polls never queue behind commits
            if beat:
                me = await repo.site_by_id(site.site_id)
                seen = me.last_seen_at if me is not None else None
            runs = await repo.running_runs_of_site(site.site_id)
            poll = await self._task_in(repo, site, runs)
        if beat:
            await self._heartbeat(site.site_id, seen)
        return poll

    async def _heartbeat(self, site_id: int, seen: datetime | None) -> None:
        """A poll is a sign of life: ``last_seen_at`` moves, written once per heartbeat."""
        moment = now()
        if seen is not None and seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if seen is not None and moment - seen < self._heartbeat_every:
            return
        async with self._db.transaction() as repo:
            me = await repo.site_by_id(site_id)
            if me is not None:
                me.last_seen_at = moment

    async def _task_in(self, repo: Repository, site: Principal, runs: Sequence[RunRow]) -> TaskPoll:
        """The first open round of ``runs`` the site owes an update to, signed as a task."""
        assert site.site_id is not None
        for run in runs:
            if run.current_round is None:
                continue
            row = await repo.round(run.id, run.current_round)
            if row is None or row.status != "open" or not takes_part(row, site.name):
                continue  # a site sampled out of the round owes it nothing
            if await repo.update_of(row.id, site.site_id) is not None:
                continue
            if await decline_of(repo, row.id, site.site_id) is not None:
                continue  # the site declined this round: nothing more is owed
            assert row.weights_sha256 and row.public_key and row.deadline
            config = run_config(run)
            task = Task(
                run_id=run.id,
                round=row.number,
                site=site.name,
                model=config.model,
                model_params=dict(config.model_params),
                weights_sha256=row.weights_sha256,
                bundle_path=routes.MODEL_BUNDLE.format(run_id=run.id, version=row.number - 1),
                upload_path=routes.UPDATES.format(run_id=run.id, round=row.number),
                round_public_key=row.public_key,
                deadline=row.deadline,
                training=config.training,
                privacy=config.privacy,
                rounds=config.rounds,
                quorum=config.quorum,
                proximal_mu=proximal_mu(config.aggregation),
                issued_at=now(),
            )
            return TaskPoll(
                task=sign_task(task, self._signing_key),
                active_runs=len(runs),
                retry_after_s=0.0,
            )
        return TaskPoll(task=None, active_runs=len(runs), retry_after_s=RETRY_AFTER_S)

    async def report(self, site: Principal, report: StatusReport) -> None:
        """Record where a site is in a round (for the dashboard)."""
        site_id = site.require_site()
        async with self._db.transaction() as repo:
            if await repo.run(report.run_id) is None:
                raise NotFound(f"run {report.run_id} does not exist", code="unknown_run")
            if not await repo.is_member(report.run_id, site_id):
                raise Forbidden(f"this site is not a member of run {report.run_id}")
            row = await repo.round(report.run_id, report.round)
            if row is None:
                raise NotFound(
                    f"run {report.run_id} has no round {report.round}", code="unknown_round"
                )
            await repo.set_progress(
                round_id=row.id,
                site_id=site_id,
                state=report.state,
                message=report.message,
                metrics=dict(report.metrics),
                now=now(),
            )
