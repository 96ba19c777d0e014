"""Runs as the admin sees them: create, start, stop, list, read, rounds, models.

Starting signs model version 0 and hands the run to the `Coordinator`, which owns
its rounds from then on; stopping asks the coordinator to cancel the live round.
Start and stop are serialised with each other (one lifecycle lock).
"""

from __future__ import annotations

import asyncio
import secrets

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.db.declines import declines_of_round
from server.db.engine import Database
from server.db.models import RunRow
from server.db.repositories import model_version_info, run_config, run_info
from server.services.auth import Principal, now
from server.services.model_worker import build_in_worker
from server.services.participants import takes_part
from server.services.publishing import build_bundle, check_model, initial_weights, read_bundle
from server.services.rounds import Coordinator, find_run
from server.services.served import refuse_unserved
from server.services.sites import is_silent
from server.storage import BlobStore
from shared.bundle import Bundle
from shared.errors import Conflict, Forbidden, NotFound
from shared.schemas import (
    ModelVersion,
    RoundInfo,
    RunConfig,
    RunCreate,
    RunInfo,
    RunStatus,
    SiteProgress,
)


class RunService:
    """Admin-facing run operations; round mechanics live in `Coordinator`."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        coordinator: Coordinator,
        signing_key: Ed25519PrivateKey,
        build_models_in_subprocess: bool = False,
        offline_after_s: float = 120.0,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._coordinator = coordinator
        self._signing_key = signing_key
        self._in_subprocess = build_models_in_subprocess
        self._lifecycle = asyncio.Lock()
        self._offline_after_s = offline_after_s

    async def create(self, request: RunCreate, actor: Principal) -> RunInfo:
        """Validate the configuration and register the run (status created)."""
        actor.require_admin()
        config = request.config
        check_model(config)
        refuse_unserved(config)
        moment = now()
        async with self._db.transaction() as repo:
            sites = {site.name: site for site in await repo.sites_by_names(config.sites)}
            unknown = [name for name in config.sites if name not in sites]
            if unknown:
                raise NotFound(f"unknown sites: {', '.join(unknown)}", code="unknown_site")
            revoked = [name for name, site in sites.items() if site.status == "revoked"]
            if revoked:
                raise Conflict(f"revoked sites cannot take part: {', '.join(revoked)}")
            run_id = f"run-{secrets.token_hex(4)}"
            while await repo.run(run_id) is not None:
                run_id = f"run-{secrets.token_hex(4)}"
            row = RunRow(
                id=run_id,
                name=request.name,
                status=RunStatus.CREATED.value,
                config=config.model_dump(mode="json"),
                created_at=moment,
            )
            await repo.add_run(row, [sites[name].id for name in config.sites])
            await repo.audit(
                actor=actor.actor,
                action="run.created",
                target=f"run:{run_id}",
                now=moment,
                name=request.name,
                sites=list(config.sites),
            )
            return run_info(row)

    async def list_runs(self, actor: Principal) -> list[RunInfo]:
        """Every run."""
        actor.require_reader()
        async with self._db.read() as repo:
            return [run_info(row) for row in await repo.list_runs()]

    async def get(self, run_id: str, actor: Principal) -> RunInfo:
        """One run."""
        actor.require_reader()
        async with self._db.read() as repo:
            return run_info(await find_run(repo, run_id))

    async def start(self, run_id: str, actor: Principal) -> RunInfo:
        """Start a created run: version 0 is signed and round 1 opens."""
        actor.require_admin()
        async with self._lifecycle:
            async with self._db.read() as repo:
                run = await find_run(repo, run_id)
                if run.status != RunStatus.CREATED:
                    raise Conflict(f"run {run_id} is {run.status}, not created", code="run_state")
                config = run_config(run)
                revoked = [
                    site.name for site in await repo.run_sites(run_id) if site.status == "revoked"
                ]
            if revoked:
                raise Conflict(f"sites {', '.join(revoked)} are revoked", code="run_state")
            bundle = await self._initial_bundle(run_id, config)
            await to_thread.run_sync(self._blobs.put_bytes, bundle.data, bundle.sha256)
            await self._coordinator.begin_run(run_id, bundle, actor.actor)
        return await self.get(run_id, actor)

    async def stop(self, run_id: str, actor: Principal) -> RunInfo:
        """Cancel a created or running run and its open round."""
        actor.require_admin()
        async with self._lifecycle:
            async with self._db.read() as repo:
                run = await find_run(repo, run_id)
                if run.status not in (RunStatus.CREATED, RunStatus.RUNNING):
                    raise Conflict(f"run {run_id} is already {run.status}", code="run_state")
            await self._coordinator.cancel_run(run_id, actor.actor)
        return await self.get(run_id, actor)

    async def _initial_bundle(self, run_id: str, config: RunConfig) -> Bundle:
        """Round-0 weights, built in a child process when so configured, then signed."""
        if self._in_subprocess:
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

    async def rounds(self, run_id: str, actor: Principal) -> list[RoundInfo]:
        """Every round of a run, with per-site progress."""
        actor.require_reader()
        async with self._db.read() as repo:
            await find_run(repo, run_id)
            numbers = [row.number for row in await repo.rounds(run_id)]
        return [await self.round(run_id, number, actor) for number in numbers]

    async def round(self, run_id: str, number: int, actor: Principal) -> RoundInfo:
        """One round with what each member site has done in it."""
        actor.require_reader()
        async with self._db.read() as repo:
            await find_run(repo, run_id)
            row = await repo.round(run_id, number)
            if row is None:
                raise NotFound(f"run {run_id} has no round {number}", code="unknown_round")
            members = await repo.run_sites(run_id)
            updates = {update.site_id: update for update in await repo.updates_of_round(row.id)}
            progress = {item.site_id: item for item in await repo.progress_of_round(row.id)}
            declines = {item.site_id: item for item in await declines_of_round(repo, row.id)}
            sites: list[SiteProgress] = []
            moment = now()
            for site in members:
                # a site still owing this open round that stopped polling is offline
                silent = row.status == "open" and is_silent(
                    site.last_seen_at, moment, self._offline_after_s
                )
                update = updates.get(site.id)
                report = progress.get(site.id)
                declined = declines.get(site.id)
                if not takes_part(row, site.name):
                    sites.append(
                        SiteProgress(
                            site=site.name, state="sampled_out", last_seen_at=site.last_seen_at
                        )
                    )
                elif update is not None:
                    sites.append(
                        SiteProgress.model_validate(
                            {
                                "site": site.name,
                                "state": "uploaded",
                                "num_samples": update.num_samples,
                                "metrics": dict(update.metrics),
                                "updated_at": update.received_at,
                                "last_seen_at": site.last_seen_at,
                                "privacy": update.privacy,
                            }
                        )
                    )
                elif declined is not None:
                    sites.append(
                        SiteProgress(
                            site=site.name,
                            state="declined",
                            message=declined.message or None,
                            decline_reason=declined.reason,
                            updated_at=declined.recorded_at,
                            last_seen_at=site.last_seen_at,
                        )
                    )
                elif report is not None:
                    sites.append(
                        SiteProgress.model_validate(
                            {
                                "site": site.name,
                                "state": "offline" if silent else report.state,
                                "message": report.message,
                                "metrics": dict(report.metrics),
                                "updated_at": report.updated_at,
                                "last_seen_at": site.last_seen_at,
                            }
                        )
                    )
                else:
                    sites.append(
                        SiteProgress(
                            site=site.name,
                            state="offline" if silent else "waiting",
                            last_seen_at=site.last_seen_at,
                        )
                    )
            return RoundInfo.model_validate(
                {
                    "run_id": run_id,
                    "round": row.number,
                    "status": row.status,
                    "opened_at": row.opened_at,
                    "deadline": row.deadline,
                    "closed_at": row.closed_at,
                    "weights_sha256": row.weights_sha256,
                    "participants": row.participants,
                    "sites": sites,
                }
            )

    async def models(self, run_id: str, actor: Principal) -> list[ModelVersion]:
        """Every signed model version of a run."""
        actor.require_reader()
        async with self._db.read() as repo:
            await find_run(repo, run_id)
            return [model_version_info(row) for row in await repo.model_versions(run_id)]

    async def bundle(
        self, run_id: str, version: int, actor: Principal, *, record: bool = True
    ) -> Bundle:
        """A model version's signed bundle, for readers and the run's member sites.

        ``record`` audits the download; resumed (ranged) downloads pass False.
        """
        async with self._db.transaction() as repo:
            await find_run(repo, run_id)
            if actor.role == "site":
                if actor.site_id is None or not await repo.is_member(run_id, actor.site_id):
                    raise Forbidden(f"this site is not a member of run {run_id}")
            else:
                actor.require_reader()
            row = await repo.model_version(run_id, version)
            if row is None:
                raise NotFound(f"run {run_id} has no model version {version}")
            if record:
                await repo.audit(
                    actor=actor.actor,
                    action="model.downloaded",
                    target=f"run:{run_id}/model:{version}",
                    now=now(),
                )
            key = row.bundle
        cached = self._coordinator.cached_bundle(run_id, version)
        if cached is not None:
            return cached
        return await read_bundle(self._blobs, key, run_id=run_id, version=version)
