"""The api tier: the app in-process over httpx's ASGI transport, a fresh database per test.

Each test gets a fresh data directory (keys, blobs) and a fresh database: a SQLite
file, and, when PostgreSQL answers on 127.0.0.1:5432, a fresh schema there too
(those variants carry the ``postgres`` marker). `Harness` wraps the calls a test
needs: an admin, enrolled sites with real keys, runs, tasks, sealed updates, and a
snapshot of every database row and blob file for the "nothing changed" checks.
"""

from __future__ import annotations

import base64
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect, text

from server.app import create_app
from server.bootstrap import init_data_dir
from server.db.engine import sync_url
from server.settings import Settings
from shared import crypto, routes
from shared.bundle import open_bundle
from shared.schemas import SignedTask, Task, UpdateHeader
from shared.tasks import verify_task
from shared.tensors import Tensors
from shared.updates import seal_update

TINY_MODEL: dict[str, Any] = {"blocks_down": [1], "blocks_up": []}
PG_HOST, PG_PORT = "127.0.0.1", 5432


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_user() -> str | None:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            pass
    except OSError:
        return None
    import psycopg

    for user in ("postgres", "root"):
        try:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="test"):
                return user
        except psycopg.Error:
            continue
    return None


@pytest.fixture(scope="session")
def postgres_user() -> str | None:
    return _postgres_user()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_user: str | None
) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fedseg.db'}"
        return
    if postgres_user is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=postgres_user, dbname="test", autocommit=True
    ) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield (
            f"postgresql+psycopg://{postgres_user}@{PG_HOST}:{PG_PORT}/test"
            f"?options=-csearch_path%3D{schema}"
        )
    finally:
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=postgres_user, dbname="test", autocommit=True
        ) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass
class Initialised:
    settings: Settings
    admin_token: str
    server_key_id: str


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "tick_s": 0.05,
        "max_update_bytes": 1024 * 1024,
        "max_wait_s": 5.0,
        "build_models_in_subprocess": False,  # MONAI is already imported here
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def initialised(tmp_path: Path, database_url: str) -> Initialised:
    """`fedseg server init` done: keys, schema and the first admin token."""
    settings = make_settings(tmp_path / "data", database_url)
    result = init_data_dir(settings)
    return Initialised(settings, result.admin_token, result.server_key_id)


@dataclass
class Site:
    """An enrolled site: its name, its Ed25519 key and its credential."""

    name: str
    key: Ed25519PrivateKey
    credential: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


@dataclass
class Harness:
    """One app, one client, and the helpers the api tests share."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    admin_token: str
    _engine: Any = field(default=None, repr=False)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def server_key(self) -> Any:
        return crypto.load_signing_key(self.settings.signing_key_path).public_key()

    # --- set-up -----------------------------------------------------------------------

    async def add_site(self, name: str) -> Site:
        created = await self.client.post(routes.SITES, json={"name": name}, headers=self.admin)
        assert created.status_code == 201, created.text
        key = crypto.generate_signing_key()
        enrolled = await self.client.post(
            routes.ENROLL,
            json={
                "token": created.json()["enrollment_token"],
                "signing_public_key": base64.b64encode(
                    crypto.public_bytes(key.public_key())
                ).decode(),
            },
        )
        assert enrolled.status_code == 200, enrolled.text
        return Site(name=name, key=key, credential=enrolled.json()["credential"])

    async def create_run(self, sites: list[Site], *, start: bool = True, **config: Any) -> str:
        body = {
            "name": "test-run",
            "config": {
                "model": "segresnet-small",
                "model_params": TINY_MODEL,
                "rounds": 2,
                "sites": [site.name for site in sites],
                **config,
            },
        }
        created = await self.client.post(routes.RUNS, json=body, headers=self.admin)
        assert created.status_code == 201, created.text
        run_id: str = created.json()["id"]
        if start:
            started = await self.client.post(
                routes.RUN_START.format(run_id=run_id), headers=self.admin
            )
            assert started.status_code == 200, started.text
        return run_id

    async def task(self, site: Site, wait: float = 0) -> Task | None:
        answer = await self.client.get(
            routes.TASKS_NEXT, params={"wait": wait}, headers=site.headers
        )
        assert answer.status_code == 200, answer.text
        signed = answer.json()["task"]
        if signed is None:
            return None
        return verify_task(SignedTask.model_validate(signed), self.server_key)

    async def model(self, run_id: str, version: int) -> Tensors:
        answer = await self.client.get(
            routes.MODEL_BUNDLE.format(run_id=run_id, version=version), headers=self.admin
        )
        assert answer.status_code == 200, answer.text
        opened = open_bundle(answer.content, {crypto.key_id(self.server_key): self.server_key})
        return opened.tensors

    # --- updates ----------------------------------------------------------------------

    @staticmethod
    def delta_like(base: Tensors, seed: int, scale: float = 0.01) -> Tensors:
        generator = torch.Generator().manual_seed(seed)
        return {
            name: torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * scale
            for name, tensor in base.items()
        }

    def seal(
        self,
        sender: Site,
        task: Task,
        change: Tensors,
        *,
        num_samples: int = 10,
        round_key: X25519PublicKey | None = None,
        signer: Ed25519PrivateKey | None = None,
        **header: Any,
    ) -> bytes:
        values: dict[str, Any] = {
            "run_id": task.run_id,
            "round": task.round,
            "site": sender.name,
            "base_weights_sha256": task.weights_sha256,
            "num_samples": num_samples,
            "metrics": {"dice_mean": 0.5, "train_loss": 0.7},
            "created_at": datetime.now(UTC),
        }
        values.update(header)
        key = round_key or crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key))
        try:
            header = UpdateHeader(**values)
        except ValidationError:  # out of the schema's range: sent as a hostile client would
            header = UpdateHeader.model_construct(**values)
        return seal_update(header, change, round_key=key, site_key=signer or sender.key)

    async def upload(
        self,
        site: Site,
        run_id: str,
        number: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self.client.put(
            routes.UPDATES.format(run_id=run_id, round=number),
            content=body,
            headers={**site.headers, "Content-Type": routes.UPDATE_CONTENT_TYPE, **(headers or {})},
        )

    # --- "nothing changed" ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every row of every table but the audit log, and every file in the blob store."""
        if self._engine is None:
            self._engine = create_engine(sync_url(self.settings.database_url))
        rows: dict[str, Any] = {}
        with self._engine.connect() as connection:
            for table in sorted(inspect(connection).get_table_names()):
                if table in ("audit_events", "audit_chain", "alembic_version"):
                    continue
                result = connection.execute(text(f"SELECT * FROM {table}"))
                columns = list(result.keys())
                rows[table] = sorted(
                    (
                        tuple(
                            (name, repr(value))
                            for name, value in zip(columns, row, strict=True)
                            if name != "last_seen_at"
                        )
                        for row in result
                    ),
                )
        blob_root = self.settings.blob_dir
        files = sorted(
            str(path.relative_to(blob_root)) for path in blob_root.rglob("*") if path.is_file()
        )
        keys = sorted(
            str(path.relative_to(self.settings.keys_dir))
            for path in self.settings.keys_dir.rglob("*")
            if path.is_file()
        )
        return {"rows": rows, "blobs": files, "keys": keys}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@asynccontextmanager
async def serving(initialised: Initialised) -> AsyncIterator[Harness]:
    """One server process's lifetime: the app, its lifespan, a client over ASGI.

    Entered twice on the same data directory, it is a server restart.
    """
    app = create_app(initialised.settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            harness = Harness(app, client, initialised.settings, initialised.admin_token)
            try:
                yield harness
            finally:
                harness.close()


@pytest.fixture
async def harness(initialised: Initialised) -> AsyncIterator[Harness]:
    """The app with its lifespan running, and a client over the ASGI transport."""
    async with serving(initialised) as running:
        yield running


def problem_code(response: httpx.Response) -> str:
    """The stable ``code`` of a problem+json answer (and check that it is one)."""
    assert response.headers["content-type"].startswith(routes.PROBLEM_CONTENT_TYPE), response.text
    body = response.json()
    assert body["status"] == response.status_code
    code: str = body["code"]
    return code
