"""The coordination server: `create_app(settings)` is the only place objects are built.

The lifespan migrates the database, builds the engine, stores, keys and services,
resumes undecided rounds, and runs the ticker that settles rounds at their
deadline. Routes receive the services through dependencies; tests pass their own
settings and drive the lifespan themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from server.api import ROUTERS, problems
from server.db.engine import Database, make_engine, migrate
from server.metrics import Metrics
from server.services.auth import AuthService
from server.services.container import Services
from server.services.events import Notifier
from server.services.keys import RoundKeys
from server.services.operations import OperationsService
from server.services.rounds import Coordinator, UploadLimits
from server.services.runs import RunService
from server.services.sites import SiteService
from server.services.tasks import TaskService
from server.settings import Settings
from server.storage import FileBlobStore
from shared import crypto

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Coordination server of fedseg: federated brain-tumour segmentation.

Sites (hospitals) long-poll for signed tasks, download signed model bundles and
upload sealed weight updates; admins register sites, launch runs and download
models. Errors are `application/problem+json` with a stable `code`.
"""

_TAGS = [
    {"name": "site", "description": "What a hospital's agent calls (site credential)."},
    {"name": "models", "description": "Signed model bundles (member sites, viewers, admins)."},
    {"name": "sites", "description": "Registering and revoking sites (admin; viewers read)."},
    {"name": "runs", "description": "Runs, rounds and model versions (admin; viewers read)."},
    {"name": "audit", "description": "The append-only audit log (admin and viewer)."},
    {"name": "operations", "description": "Health, readiness and Prometheus metrics."},
]


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``; refuses unsafe settings before anything starts."""
    settings.check()
    signing_key = crypto.load_signing_key(settings.signing_key_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(migrate, settings.database_url)
        db = Database(make_engine(settings.database_url))
        blobs = FileBlobStore(settings.blob_dir)
        metrics = Metrics()
        notifier = Notifier()
        coordinator = Coordinator(
            db=db,
            blobs=blobs,
            keys=RoundKeys(settings.round_keys_dir),
            signing_key=signing_key,
            metrics=metrics,
            notifier=notifier,
            limits=UploadLimits(
                max_bytes=settings.max_update_bytes,
                verify_concurrency=settings.verify_concurrency,
                build_models_in_subprocess=settings.build_models_in_subprocess,
            ),
        )
        app.state.services = Services(
            auth=AuthService(db),
            sites=SiteService(
                db, signing_key.public_key(), offline_after_s=settings.site_offline_after_s
            ),
            runs=RunService(db, blobs, coordinator, offline_after_s=settings.site_offline_after_s),
            coordinator=coordinator,
            tasks=TaskService(
                db,
                signing_key,
                notifier,
                settings.max_wait_s,
                heartbeat_every_s=settings.site_offline_after_s / 10,
            ),
            operations=OperationsService(db, blobs),
            metrics=metrics,
        )
        await coordinator.resume()
        ticker = asyncio.create_task(_tick_forever(coordinator, settings.tick_s))
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await db.close()

    app = FastAPI(
        title="fedseg coordination server",
        version="1",
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        lifespan=lifespan,
    )
    problems.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _tick_forever(coordinator: Coordinator, every_s: float) -> None:
    """Settle rounds at their deadline (and retry failed closes) every ``every_s``."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await coordinator.tick()
        except Exception:
            log.exception("round ticker failed")


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory server.app:app_from_env`` (settings from FEDSEG_*)."""
    return create_app(Settings())
