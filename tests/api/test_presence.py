"""Heartbeat: every poll moves a site's ``last_seen_at``; a silent site shows ``offline``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from server.app import create_app
from shared import routes
from shared.schemas import RoundInfo, SiteInfo
from tests.api.conftest import Harness, Initialised

pytestmark = pytest.mark.anyio

SILENCE_S = 0.4


@pytest.fixture
async def quick(initialised: Initialised) -> AsyncIterator[Harness]:
    """The app with a short offline threshold."""
    settings = initialised.settings.model_copy(update={"site_offline_after_s": SILENCE_S})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            harness = Harness(app, client, settings, initialised.admin_token)
            try:
                yield harness
            finally:
                harness.close()


async def sites(harness: Harness) -> dict[str, SiteInfo]:
    answer = await harness.client.get(routes.SITES, headers=harness.admin)
    assert answer.status_code == 200, answer.text
    return {item["name"]: SiteInfo.model_validate(item) for item in answer.json()}


async def test_last_seen_moves_with_polls(quick: Harness) -> None:
    """Written at most once per tenth of the offline threshold, so polls cost no extra write."""
    harness = quick
    site = await harness.add_site("site-a")
    seen = []
    for _ in range(3):
        await asyncio.sleep(SILENCE_S / 10 + 0.02)
        await harness.task(site)
        seen.append((await sites(harness))["site-a"].last_seen_at)
    assert all(value is not None for value in seen)
    assert seen[0] < seen[1] < seen[2]  # type: ignore[operator]


async def test_a_silent_site_shows_offline_in_status(quick: Harness) -> None:
    alive, silent = await quick.add_site("site-a"), await quick.add_site("site-b")
    run_id = await quick.create_run([alive, silent])
    assert await quick.task(silent) is not None  # it took the task, then went quiet
    await asyncio.sleep(SILENCE_S + 0.2)
    assert await quick.task(alive) is not None
    answer = await quick.client.get(routes.ROUNDS.format(run_id=run_id), headers=quick.admin)
    (info,) = [RoundInfo.model_validate(item) for item in answer.json()]
    states = {progress.site: progress for progress in info.sites}
    assert states["site-b"].state == "offline" and states["site-b"].last_seen_at is not None
    assert states["site-a"].state != "offline"
    listing = await sites(quick)
    assert listing["site-b"].offline and not listing["site-a"].offline
