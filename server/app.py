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
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import FastAPI
from sqlalchemy import make_url

from server import ui
from server.api import ROUTERS, openapi, problems
from server.api.gate import AuthGate
from server.api.limits import BodyLimit, body_limits
from server.api.throttle import AddressWindow
from server.db.engine import Database, make_engine, migrate
from server.metrics import Metrics
from server.services.audit import AuditService
from server.services.auth import AuthService
from server.services.blob_sweep import sweep_unreferenced_blobs
from server.services.container import Services
from server.services.declines import DeclineService
from server.services.events import Notifier
from server.services.intake import UpdateIntake, UploadLimits
from server.services.keys import RoundKeys
from server.services.operations import OperationsService
from server.services.rotations import KeyRotations, check_rotations, load_rotations
from server.services.rounds import Coordinator
from server.services.runs import RunService
from server.services.sites import SiteService
from server.services.tasks import TaskService
from server.services.tokens import TokenService
from server.settings import Settings
from server.storage import FileBlobStore
from shared import crypto

log = logging.getLogger(__name__)
AUDIT_FLUSH_S = 5.0
PRIVATE_UMASK = 0o077

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
    {"name": "audit", "description": "The hash-chained audit log (admin and viewer)."},
    {"name": "tokens", "description": "Admin and viewer tokens: mint, list, revoke (admin)."},
    {"name": "operations", "description": "Health, readiness and Prometheus metrics."},
    {"name": "dashboard", "description": "Sign-in links for the web dashboard under /ui."},
]


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``; refuses unsafe settings before anything starts."""
    settings.check()
    signing_key = crypto.load_signing_key(settings.signing_key_path)
    rotations = load_rotations(settings.rotations_path)
    check_rotations(rotations, signing_key.public_key())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        previous_umask = os.umask(PRIVATE_UMASK)  # database, blobs and keys: owner only
        try:
            async with _serving(app) as running:
                yield running
        finally:
            os.umask(previous_umask)

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(migrate, settings.database_url)
        _restrict_existing(settings)
        db = Database(make_engine(settings.database_url))
        blobs = FileBlobStore(settings.blob_dir)
        await sweep_unreferenced_blobs(db, blobs)  # nothing is in flight yet
        metrics = Metrics()
        notifier = Notifier()
        audit = AuditService(db)
        coordinator = Coordinator(
            db=db,
            blobs=blobs,
            keys=RoundKeys(settings.round_keys_dir),
            signing_key=signing_key,
            metrics=metrics,
            notifier=notifier,
        )
        limits = UploadLimits(
            max_bytes=settings.max_update_bytes,
            verify_concurrency=settings.verify_concurrency,
            build_models_in_subprocess=settings.build_models_in_subprocess,
        )
        app.state.services = Services(
            auth=AuthService(db),
            sites=SiteService(
                db, signing_key.public_key(), offline_after_s=settings.site_offline_after_s
            ),
            runs=RunService(
                db=db,
                blobs=blobs,
                coordinator=coordinator,
                signing_key=signing_key,
                build_models_in_subprocess=limits.build_models_in_subprocess,
                offline_after_s=settings.site_offline_after_s,
            ),
            coordinator=coordinator,
            intake=UpdateIntake(
                db=db, blobs=blobs, rounds=coordinator, metrics=metrics, limits=limits
            ),
            declines=DeclineService(db=db, rounds=coordinator, metrics=metrics),
            tasks=TaskService(
                db,
                signing_key,
                notifier,
                settings.max_wait_s,
                heartbeat_every_s=settings.site_offline_after_s / 10,
            ),
            operations=OperationsService(db, blobs),
            metrics=metrics,
            tokens=TokenService(db),
            audit=audit,
            rotations=KeyRotations(rotations),
        )
        await db.seal_audit()  # events of a previous process that did not get sealed
        await coordinator.resume()
        ticker = asyncio.create_task(_tick_forever(coordinator, settings.tick_s))
        flusher = asyncio.create_task(_flush_audit_forever(audit, AUDIT_FLUSH_S))
        try:
            yield
        finally:
            for task in (ticker, flusher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await audit.flush(everything=True)
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
    ui.install(app)
    openapi.install(app)
    # Outermost last: the gate authenticates (or throttles) before the limit counts a byte.
    app.add_middleware(
        BodyLimit,
        limit_for=body_limits(
            max_body_bytes=settings.max_body_bytes, max_enroll_bytes=settings.max_enroll_bytes
        ),
    )
    app.state.auth_failures = AddressWindow(
        limit=settings.auth_failure_limit,
        window_s=settings.auth_failure_window_s,
        max_addresses=settings.rate_limit_addresses,
    )
    app.add_middleware(AuthGate, failures=app.state.auth_failures)
    return app


def _restrict_existing(settings: Settings) -> None:
    """What ``server init`` (or an older version) made before the umask becomes owner-only.

    The data, key and blob directories become 0700 and an SQLite database 0600; SQLite
    gives its -wal and -shm files the database file's mode, so they follow.
    """
    paths = [settings.data_dir, settings.keys_dir, settings.blob_dir]
    if settings.database_url.startswith("sqlite"):
        database = Path(make_url(settings.database_url).database or "")
        paths += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    for path in paths:
        with contextlib.suppress(OSError):  # missing, or a mount we do not own
            path.chmod(0o700 if path.is_dir() else 0o600)


async def _tick_forever(coordinator: Coordinator, every_s: float) -> None:
    """Settle rounds at their deadline (and retry failed closes) every ``every_s``."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await coordinator.tick()
        except Exception:
            log.exception("round ticker failed")


async def _flush_audit_forever(audit: AuditService, every_s: float) -> None:
    """Write the refused requests of every ended window as audit events."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await audit.flush()
        except Exception:
            log.exception("writing refused requests to the audit log failed")


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory server.app:app_from_env`` (settings from FEDSEG_*)."""
    return create_app(Settings())
