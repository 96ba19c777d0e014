"""``sites_per_round``: each round samples k of the run's sites, on record, over HTTP.

A sampled-out site gets no task and its upload or decline for that round is refused
(``not_a_participant``); the round closes with its participants' updates only, and a
restarted server waits for the same participants it recorded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from server.db.engine import sync_url
from server.services.participants import participants
from shared import routes
from shared.tensors import Tensors
from tests.api.conftest import Harness, Initialised, Site, problem_code, serving
from tests.api.test_declines import decline, round_info, run_info, signed

pytestmark = pytest.mark.anyio


def _recorded(harness: Harness) -> list[tuple[int, list[str] | None]]:
    """``rounds.participants`` as stored, by round number."""
    engine = create_engine(sync_url(harness.settings.database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT number, participants FROM rounds ORDER BY 1"))
            return [(int(number), _as_list(value)) for number, value in rows]
    finally:
        engine.dispose()


def _as_list(value: object) -> list[str] | None:
    if isinstance(value, str):  # SQLite hands JSON back as text
        value = json.loads(value)
    assert value is None or isinstance(value, list)
    return value


async def _split(
    harness: Harness, sites: list[Site], run_id: str, number: int
) -> tuple[list[Site], Site]:
    """The round's participants (as the round info shows them) and the one sampled out."""
    info = await round_info(harness, run_id, number)
    expected = participants(
        [site.name for site in sites], 2, seed=0, run_id=run_id, round_number=number
    )
    assert info.participants == expected
    states = {progress.site: progress.state for progress in info.sites}
    chosen = [site for site in sites if site.name in expected]
    (out,) = [site for site in sites if site.name not in expected]
    assert states[out.name] == "sampled_out"
    return chosen, out


async def _refused(harness: Harness, out: Site, ally: Site, run_id: str, number: int) -> None:
    """The sampled-out site has no task; its upload and decline for the round are refused."""
    assert await harness.task(out) is None
    task = await harness.task(ally)
    assert task is not None and task.round == number
    base = await harness.model(run_id, number - 1)
    body = harness.seal(out, task, harness.delta_like(base, seed=99))
    answer = await harness.upload(out, run_id, number, body)
    assert answer.status_code == 409 and problem_code(answer) == "not_a_participant"
    answer = await decline(harness, out, run_id, number, signed(out, run_id, number))
    assert answer.status_code == 409 and problem_code(answer) == "not_a_participant"


async def _upload(harness: Harness, site: Site, run_id: str, number: int, seed: int) -> Tensors:
    task = await harness.task(site)
    assert task is not None and task.round == number
    delta = harness.delta_like(await harness.model(run_id, number - 1), seed=seed)
    answer = await harness.upload(site, run_id, number, harness.seal(site, task, delta))
    assert answer.status_code == 200, answer.text
    return delta


async def test_a_round_samples_two_of_three_and_closes_with_their_updates(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(f"site-{index}") for index in range(3)]
    run_id = await harness.create_run(sites, rounds=1, sites_per_round=2)
    chosen, out = await _split(harness, sites, run_id, 1)
    await _refused(harness, out, chosen[0], run_id, 1)
    base = await harness.model(run_id, 0)
    deltas = [
        await _upload(harness, site, run_id, 1, seed=index) for index, site in enumerate(chosen)
    ]
    assert (await run_info(harness, run_id)).status == "completed"
    consensus = await harness.model(run_id, 1)
    for name, tensor in base.items():  # equal weights: the mean of the two deltas
        mean = (deltas[0][name].numpy() + deltas[1][name].numpy()) / 2
        np.testing.assert_allclose(consensus[name].numpy(), tensor.numpy() + mean, atol=1e-6)
    info = await round_info(harness, run_id, 1)
    assert sorted(p.state for p in info.sites) == ["sampled_out", "uploaded", "uploaded"]
    assert _recorded(harness) == [(1, [site.name for site in chosen])]
    events = await harness.client.get(routes.AUDIT, params={"limit": 100}, headers=harness.admin)
    assert events.status_code == 200, events.text
    opened = [event for event in events.json() if event["action"] == "round.opened"]
    assert [event["detail"]["participants"] for event in opened] == [info.participants]


async def test_the_sample_survives_a_restart_and_the_run_completes(
    initialised: Initialised,
) -> None:
    async with serving(initialised) as first:
        sites = [await first.add_site(f"site-{index}") for index in range(3)]
        run_id = await first.create_run(sites, rounds=3, sites_per_round=2)
        for number in (1, 2):
            chosen, _ = await _split(first, sites, run_id, number)
            for index, site in enumerate(chosen):
                await _upload(first, site, run_id, number, seed=10 * number + index)
        chosen, out = await _split(first, sites, run_id, 3)
        await _upload(first, chosen[0], run_id, 3, seed=30)
        before = _recorded(first)
    assert [number for number, _ in before] == [1, 2, 3]
    assert all(sample is not None and len(sample) == 2 for _, sample in before)
    async with serving(initialised) as second:
        assert _recorded(second) == before
        assert (await _split(second, sites, run_id, 3)) == (chosen, out)
        await _refused(second, out, chosen[1], run_id, 3)
        await _upload(second, chosen[1], run_id, 3, seed=31)
        assert (await run_info(second, run_id)).status == "completed"


async def test_every_member_takes_part_without_sites_per_round(harness: Harness) -> None:
    sites = [await harness.add_site(f"site-{index}") for index in range(2)]
    run_id = await harness.create_run(sites, rounds=1)
    assert (await round_info(harness, run_id, 1)).participants is None
    assert _recorded(harness) == [(1, None)]


@pytest.mark.parametrize("k", [0, 4])
async def test_a_bad_sites_per_round_is_a_422_naming_the_field(harness: Harness, k: int) -> None:
    sites = [await harness.add_site(f"site-{index}") for index in range(3)]
    body = {"name": "bad", "config": {"sites": [site.name for site in sites], "sites_per_round": k}}
    answer = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert answer.status_code == 422 and "sites_per_round" in answer.text
