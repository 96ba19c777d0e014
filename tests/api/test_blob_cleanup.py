"""No orphan blobs: an update whose row is not committed removes its blob again, and the
server sweeps blobs no row references at start (fail closed: an unreadable database
deletes nothing). Content-addressed keys may be shared, so a blob a committed row or
another upload in flight names is never removed."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from server.db.engine import Database, make_engine
from server.db.models import UpdateRow
from server.db.repositories import Repository
from server.services.blob_sweep import SweepResult, sweep_unreferenced_blobs
from server.settings import Settings
from server.storage import BlobStore, FileBlobStore
from shared import routes
from tests.api.conftest import Harness, Initialised, Site, problem_code, serving

pytestmark = pytest.mark.anyio


def blob_path(settings: Settings, key: str) -> Path:
    return settings.blob_dir / key[:2] / key


def stored_keys(settings: Settings) -> set[str]:
    return {path.name for path in settings.blob_dir.glob("??/*") if path.is_file()}


def app_blobs(harness: Harness) -> BlobStore:
    store: BlobStore = harness.app.state.services.intake._blobs
    return store


async def opened(harness: Harness, count: int = 2) -> tuple[list[Site], str]:
    sites = [await harness.add_site(f"site-{index}") for index in range(count)]
    return sites, await harness.create_run(sites, rounds=1)


async def sealed(harness: Harness, site: Site, run_id: str, seed: int) -> bytes:
    task = await harness.task(site)
    assert task is not None
    base = await harness.model(run_id, 0)
    return harness.seal(site, task, harness.delta_like(base, seed))


async def upload_seeing_500(harness: Harness, site: Site, run_id: str, body: bytes) -> Any:
    """An upload over a transport that answers a server error instead of raising it."""
    transport = httpx.ASGITransport(app=harness.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
        return await client.put(
            routes.UPDATES.format(run_id=run_id, round=1),
            content=body,
            headers={**site.headers, "Content-Type": routes.UPDATE_CONTENT_TYPE},
        )


async def test_a_failed_insert_removes_its_blob_and_a_retry_stores_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites, run_id = await opened(harness)
    body = await sealed(harness, sites[0], run_id, seed=1)
    key = hashlib.sha256(body).hexdigest()
    insert = Repository.add_update
    failures: list[str] = []

    async def fails_once(self: Repository, row: UpdateRow) -> None:
        if not failures:
            failures.append(row.blob)
            raise OperationalError("INSERT INTO updates", {}, OSError("disk I/O error"))
        await insert(self, row)

    monkeypatch.setattr(Repository, "add_update", fails_once)
    before = harness.snapshot()
    answer = await upload_seeing_500(harness, sites[0], run_id, body)
    assert answer.status_code == 500 and problem_code(answer) == "internal"
    assert failures == [key]
    assert not blob_path(harness.settings, key).exists()
    assert harness.snapshot() == before  # no row, no blob
    retry = await harness.upload(sites[0], run_id, 1, body)
    assert retry.status_code == 200, retry.text
    assert retry.json()["update_sha256"] == key
    assert blob_path(harness.settings, key).read_bytes() == body


async def test_a_failed_insert_keeps_a_blob_a_committed_row_references(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites, run_id = await opened(harness)
    body = await sealed(harness, sites[0], run_id, seed=2)
    first = await harness.upload(sites[0], run_id, 1, body)
    assert first.status_code == 200, first.text
    key = first.json()["update_sha256"]

    async def no_update(self: Repository, round_id: int, site_id: int) -> None:
        return None

    with monkeypatch.context() as patched:
        # the same bytes reach the insert again, which the unique (round, site) refuses
        patched.setattr(Repository, "update_of", no_update)
        answer = await upload_seeing_500(harness, sites[0], run_id, body)
    assert answer.status_code == 500 and problem_code(answer) == "internal"
    assert blob_path(harness.settings, key).read_bytes() == body
    again = await harness.upload(sites[0], run_id, 1, body)  # the committed update replays
    assert again.status_code == 200 and again.json() == first.json()


async def test_a_failed_insert_keeps_a_blob_another_upload_is_storing(
    harness: Harness,
) -> None:
    pending = harness.app.state.services.intake._pending
    key = app_blobs(harness).put_bytes(b"the same sealed bytes, twice in flight")
    with pending.storing(key), pending.storing(key):
        await pending.discard(key)  # the other upload may commit it yet
    assert blob_path(harness.settings, key).is_file()
    with pending.storing(key):
        await pending.discard(key)  # only this one: nothing else can reference it
    assert not blob_path(harness.settings, key).exists()


async def test_the_sweep_removes_unreferenced_blobs_and_keeps_referenced_ones(
    harness: Harness,
) -> None:
    sites, run_id = await opened(harness)
    for seed, site in enumerate(sites):  # two updates, then the round closes: bundle v1
        answer = await harness.upload(site, run_id, 1, await sealed(harness, site, run_id, seed))
        assert answer.status_code == 200, answer.text
    referenced = stored_keys(harness.settings)
    assert len(referenced) == 4  # bundles v0 and v1, two updates
    stray = app_blobs(harness).put_bytes(b"x" * 1000)
    foreign = harness.settings.blob_dir / "notes.txt"
    foreign.write_text("not a blob")
    db = Database(make_engine(harness.settings.database_url))
    try:
        result = await sweep_unreferenced_blobs(db, app_blobs(harness))
    finally:
        await db.close()
    assert result == SweepResult(kept=4, removed=1, freed_bytes=1000)
    assert stored_keys(harness.settings) == referenced
    assert not blob_path(harness.settings, stray).exists()
    assert foreign.read_text() == "not a blob"
    for version in (0, 1):
        await harness.model(run_id, version)  # both bundles still serve


async def test_the_sweep_deletes_nothing_when_the_database_cannot_be_read(
    tmp_path: Path,
) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    key = blobs.put_bytes(b"maybe referenced")
    db = Database(make_engine(f"sqlite+aiosqlite:///{tmp_path / 'no-schema.db'}"))
    try:
        assert await sweep_unreferenced_blobs(db, blobs) is None
    finally:
        await db.close()
    assert list(blobs.keys()) == [key]


async def test_the_server_sweeps_unreferenced_blobs_at_start(
    initialised: Initialised, caplog: pytest.LogCaptureFixture
) -> None:
    settings = initialised.settings
    async with serving(initialised) as harness:
        sites, run_id = await opened(harness)
        first = await sealed(harness, sites[0], run_id, 0)
        answer = await harness.upload(sites[0], run_id, 1, first)
        assert answer.status_code == 200, answer.text
        last = await sealed(harness, sites[1], run_id, 1)
    referenced = stored_keys(settings)
    assert len(referenced) == 2  # bundle v0, one update
    stray = FileBlobStore(settings.blob_dir).put_bytes(b"left by a crash")  # 15 bytes
    with caplog.at_level(logging.INFO, logger="server.services.blob_sweep"):
        async with serving(initialised) as harness:
            assert stored_keys(settings) == referenced
            assert not blob_path(settings, stray).exists()
            assert "removed 1 unreferenced blobs (15 bytes); 2 kept" in caplog.text
            # the round resumed from the kept update's blob: the last upload closes it
            answer = await harness.upload(sites[1], run_id, 1, last)
            assert answer.status_code == 200, answer.text
            await harness.model(run_id, 1)
