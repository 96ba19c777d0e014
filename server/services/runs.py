"""Runs as the admin sees them: create, list, read, rounds with per-site progress, models."""

from __future__ import annotations

import secrets

from anyio import to_thread

from server.db.engine import Database
from server.db.models import RunRow
from server.db.repositories import model_version_info, run_info
from server.services.auth import Principal, now
from server.services.publishing import Bundle, bundle_from_bytes, check_model
from server.services.rounds import Coordinator, find_run
from server.services.sites import is_silent
from server.storage import BlobStore
from shared.errors import Forbidden, InvalidInput, NotFound, Unavailable
from shared.schemas import ModelVersion, RoundInfo, RunCreate, RunInfo, SiteProgress


class RunService:
    """Admin-facing run operations; round mechanics live in `Coordinator`."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        coordinator: Coordinator,
        *,
        offline_after_s: float = 120.0,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._coordinator = coordinator
        self._offline_after_s = offline_after_s

    async def create(self, request: RunCreate, actor: Principal) -> RunInfo:
        """Validate the configuration and register the run (status created)."""
        actor.require_admin()
        config = request.config
        check_model(config)
        moment = now()
        async with self._db.transaction() as repo:
            sites = {site.name: site for site in await repo.sites_by_names(config.sites)}
            unknown = [name for name in config.sites if name not in sites]
            if unknown:
                raise NotFound(f"unknown sites: {', '.join(unknown)}", code="unknown_site")
            revoked = [name for name, site in sites.items() if site.status == "revoked"]
            if revoked:
                raise InvalidInput(f"revoked sites cannot take part: {', '.join(revoked)}")
            run_id = f"run-{secrets.token_hex(4)}"
            while await repo.run(run_id) is not None:
                run_id = f"run-{secrets.token_hex(4)}"
            row = RunRow(
                id=run_id,
                name=request.name,
                status="created",
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
        async with self._db.transaction() as repo:
            return [run_info(row) for row in await repo.list_runs()]

    async def get(self, run_id: str, actor: Principal) -> RunInfo:
        """One run."""
        actor.require_reader()
        async with self._db.transaction() as repo:
            return run_info(await find_run(repo, run_id))

    async def start(self, run_id: str, actor: Principal) -> RunInfo:
        """Start a created run: version 0 is signed and round 1 opens."""
        await self._coordinator.start_run(run_id, actor)
        return await self.get(run_id, actor)

    async def stop(self, run_id: str, actor: Principal) -> RunInfo:
        """Cancel a run."""
        await self._coordinator.stop_run(run_id, actor)
        return await self.get(run_id, actor)

    async def rounds(self, run_id: str, actor: Principal) -> list[RoundInfo]:
        """Every round of a run, with per-site progress."""
        actor.require_reader()
        async with self._db.transaction() as repo:
            await find_run(repo, run_id)
            numbers = [row.number for row in await repo.rounds(run_id)]
        return [await self.round(run_id, number, actor) for number in numbers]

    async def round(self, run_id: str, number: int, actor: Principal) -> RoundInfo:
        """One round with what each member site has done in it."""
        actor.require_reader()
        async with self._db.transaction() as repo:
            await find_run(repo, run_id)
            row = await repo.round(run_id, number)
            if row is None:
                raise NotFound(f"run {run_id} has no round {number}", code="unknown_round")
            members = await repo.run_sites(run_id)
            updates = {update.site_id: update for update in await repo.updates_of_round(row.id)}
            progress = {item.site_id: item for item in await repo.progress_of_round(row.id)}
            sites: list[SiteProgress] = []
            moment = now()
            for site in members:
                # a site still owing this open round that stopped polling is offline
                silent = row.status == "open" and is_silent(
                    site.last_seen_at, moment, self._offline_after_s
                )
                update = updates.get(site.id)
                report = progress.get(site.id)
                if update is not None:
                    sites.append(
                        SiteProgress(
                            site=site.name,
                            state="uploaded",
                            num_samples=update.num_samples,
                            metrics=dict(update.metrics),
                            updated_at=update.received_at,
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
                    "model_sha256": row.model_sha256,
                    "sites": sites,
                }
            )

    async def models(self, run_id: str, actor: Principal) -> list[ModelVersion]:
        """Every signed model version of a run."""
        actor.require_reader()
        async with self._db.transaction() as repo:
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
        try:
            data = await to_thread.run_sync(self._blobs.get_bytes, key)
        except FileNotFoundError:
            raise Unavailable(f"bundle of {run_id} v{version} is missing from storage") from None
        return bundle_from_bytes(run_id, version, data)
