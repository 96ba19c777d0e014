"""Normal paths of a run: tasks, uploads, round closing, FedAvg, completion, bundles."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shared import crypto, routes
from shared.bundle import open_bundle
from shared.schemas import RoundInfo, RunInfo, TaskPoll, UpdateReceipt
from tests.api.conftest import Harness

pytestmark = pytest.mark.anyio


async def test_a_run_trains_to_completion_with_fedavg(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, rounds=2)
    weights = {"site-a": 3, "site-b": 10, "site-c": 27}
    for number in (1, 2):
        base = await harness.model(run_id, number - 1)
        deltas = {}
        for index, site in enumerate(sites):
            task = await harness.task(site)
            assert task is not None and task.round == number and task.site == site.name
            assert task.bundle_path == routes.MODEL_BUNDLE.format(run_id=run_id, version=number - 1)
            deltas[site.name] = harness.delta_like(base, seed=100 * number + index)
            body = harness.seal(site, task, deltas[site.name], num_samples=weights[site.name])
            answer = await harness.upload(site, run_id, number, body)
            assert answer.status_code == 200, answer.text
            receipt = UpdateReceipt.model_validate(answer.json())
            assert receipt.site == site.name and receipt.round == number
            # once uploaded, no task for this round; the last upload opens the next round
            following = await harness.task(site)
            if index < len(sites) - 1 or number == 2:
                assert following is None
            else:
                assert following is not None and following.round == number + 1
        consensus = await harness.model(run_id, number)
        total = sum(weights.values())
        for name, tensor in base.items():
            expected = (
                tensor.double().numpy()
                + sum(weights[site] * deltas[site][name].double().numpy() for site in weights)
                / total
            )
            np.testing.assert_allclose(consensus[name].numpy(), expected, rtol=0, atol=1e-6)
    run = RunInfo.model_validate(
        (await harness.client.get(routes.RUN.format(run_id=run_id), headers=harness.admin)).json()
    )
    assert run.status == "completed" and run.finished_at is not None
    rounds = [
        RoundInfo.model_validate(item)
        for item in (
            await harness.client.get(routes.ROUNDS.format(run_id=run_id), headers=harness.admin)
        ).json()
    ]
    assert [item.status for item in rounds] == ["closed", "closed"]
    assert all(progress.state == "uploaded" for item in rounds for progress in item.sites)
    models = (
        await harness.client.get(routes.MODELS.format(run_id=run_id), headers=harness.admin)
    ).json()
    assert [item["version"] for item in models] == [0, 1, 2]
    poll = TaskPoll.model_validate(
        (await harness.client.get(routes.TASKS_NEXT, headers=sites[0].headers)).json()
    )
    assert poll.task is None and poll.active_runs == 0
    assert not list(harness.settings.round_keys_dir.rglob("*.x25519"))  # round keys are gone


async def test_long_poll_wakes_when_a_round_opens(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site], start=False)
    poll = asyncio.create_task(harness.task(site, wait=5))
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = await harness.client.post(
        routes.RUN_START.format(run_id=run_id), headers=harness.admin
    )
    assert started.status_code == 200
    task = await asyncio.wait_for(poll, 3)
    assert task is not None and task.run_id == run_id and task.round == 1


async def test_bundle_download_etag_and_range(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site])
    path = routes.MODEL_BUNDLE.format(run_id=run_id, version=0)
    full = await harness.client.get(path, headers=site.headers)
    assert full.status_code == 200
    assert full.headers["content-type"] == routes.BUNDLE_CONTENT_TYPE
    etag = full.headers["etag"]
    assert etag.strip('"') == crypto.sha256(full.content).hex()
    opened = open_bundle(full.content, {crypto.key_id(harness.server_key): harness.server_key})
    assert opened.manifest.version == 0 and opened.manifest.run_id == run_id
    cached = await harness.client.get(path, headers={**site.headers, "If-None-Match": etag})
    assert cached.status_code == 304
    part = await harness.client.get(path, headers={**site.headers, "Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.content == full.content[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(full.content) - 1}/{len(full.content)}"
    suffix = await harness.client.get(path, headers={**site.headers, "Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == full.content[-10:]
    bad = await harness.client.get(path, headers={**site.headers, "Range": "bytes=999999999-"})
    assert bad.status_code == 416
    stale = await harness.client.get(
        path, headers={**site.headers, "Range": "bytes=100-", "If-Range": '"other"'}
    )
    assert stale.status_code == 200 and stale.content == full.content
