"""Intake of DP updates: the ε ledger entry, the norm check and the sample-count cap.

Every check runs before the body is stored, so a refused update leaves no row, no
blob and no weight in the sum: a delta 10⁶ times too large does not move the consensus.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from shared import routes
from shared.privacy import EpsilonEntry
from shared.schemas import RoundInfo
from shared.tensors import Tensors
from tests.api.conftest import Harness, Site, problem_code

pytestmark = pytest.mark.anyio

FEDAVG = {"mechanism": "dp_fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0}


def entry(run_id: str, number: int, mechanism: str = "dp_fedavg", **fields: Any) -> EpsilonEntry:
    values: dict[str, Any] = {
        "run_id": run_id,
        "round": number,
        "mechanism": mechanism,
        "accountant": "rdp",
        "epsilon": 0.75,
        "cumulative_epsilon": 0.75 * number,
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "clip": 1.0,
        "steps": number,
    }
    values.update(fields)
    return EpsilonEntry(**values)


def norm(change: Tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in change.values()))


def scaled(change: Tensors, to: float) -> Tensors:
    factor = to / norm(change)
    return {name: tensor * factor for name, tensor in change.items()}


def noisy(change: Tensors, std: float, seed: int) -> Tensors:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: tensor + torch.randn(tensor.shape, generator=generator) * std
        for name, tensor in change.items()
    }


async def refused(harness: Harness, answer: Any, status: int, code: str) -> None:
    before = harness.snapshot()
    response = await answer
    assert response.status_code == status, response.text
    assert problem_code(response) == code
    assert harness.snapshot() == before  # no row, no blob, no key changed


async def round_info(harness: Harness, run_id: str, number: int) -> RoundInfo:
    answer = await harness.client.get(
        routes.ROUND.format(run_id=run_id, round=number), headers=harness.admin
    )
    assert answer.status_code == 200, answer.text
    return RoundInfo.model_validate(answer.json())


async def opened(harness: Harness, count: int, **config: Any) -> tuple[list[Site], str]:
    sites = [await harness.add_site(f"site-{index}") for index in range(count)]
    return sites, await harness.create_run(sites, rounds=1, **config)


async def test_a_delta_above_the_clip_is_refused_audited_and_changes_nothing(
    harness: Harness,
) -> None:
    sites, run_id = await opened(harness, 2, privacy={"clip_norm": 1.0})
    base = await harness.model(run_id, 0)
    tasks = [await harness.task(site) for site in sites]
    assert tasks[0] is not None and tasks[1] is not None
    honest = {
        site.name: scaled(harness.delta_like(base, seed=index), 0.8)
        for index, site in enumerate(sites)
    }
    huge = {name: tensor * 1e6 for name, tensor in honest["site-0"].items()}
    body = harness.seal(sites[0], tasks[0], huge, num_samples=10)
    await refused(harness, harness.upload(sites[0], run_id, 1, body), 422, "norm_exceeded")
    answer = await harness.client.get(routes.AUDIT, params={"limit": 1000}, headers=harness.admin)
    (event,) = [item for item in answer.json() if item["action"] == "update.rejected"]
    assert event["detail"]["code"] == "norm_exceeded"
    metrics = (await harness.client.get(routes.METRICS)).text
    assert 'fedseg_updates_rejected_total{code="norm_exceeded"} 1.0' in metrics
    for site, task, weight in zip(sites, tasks, (10, 30), strict=True):
        sealed = harness.seal(site, task, honest[site.name], num_samples=weight)
        assert (await harness.upload(site, run_id, 1, sealed)).status_code == 200
    consensus = await harness.model(run_id, 1)
    for name, tensor in base.items():
        expected = (
            tensor.double().numpy()
            + (
                10 * honest["site-0"][name].double().numpy()
                + 30 * honest["site-1"][name].double().numpy()
            )
            / 40
        )
        np.testing.assert_allclose(consensus[name].numpy(), expected, rtol=0, atol=1e-6)


async def test_an_honest_noisy_dp_fedavg_update_is_stored_with_its_entry(
    harness: Harness,
) -> None:
    sites, run_id = await opened(harness, 2, privacy=FEDAVG, min_sites=2)
    base = await harness.model(run_id, 0)
    std = FEDAVG["noise_multiplier"] * FEDAVG["clip_norm"] / math.sqrt(2)
    for index, site in enumerate(sites[:1]):
        task = await harness.task(site)
        assert task is not None and task.privacy.mechanism == "dp_fedavg"
        change = noisy(scaled(harness.delta_like(base, seed=index), 1.0), std, seed=index)
        assert norm(change) > 10 * FEDAVG["clip_norm"]  # the noise share dominates
        body = harness.seal(site, task, change, privacy=entry(run_id, 1))
        answer = await harness.upload(site, run_id, 1, body)
        assert answer.status_code == 200, answer.text
    progress = {item.site: item for item in (await round_info(harness, run_id, 1)).sites}
    assert progress["site-0"].privacy == entry(run_id, 1)
    assert progress["site-1"].privacy is None
    metrics = (await harness.client.get(routes.METRICS)).text
    assert f'fedseg_site_cumulative_epsilon{{run="{run_id}",site="site-0"}} 0.75' in metrics
    task = await harness.task(sites[1])
    assert task is not None
    huge = noisy(scaled(harness.delta_like(base, seed=7), 1e6), std, seed=7)
    body = harness.seal(sites[1], task, huge, privacy=entry(run_id, 1))
    await refused(harness, harness.upload(sites[1], run_id, 1, body), 422, "norm_exceeded")


@pytest.mark.parametrize(
    ("privacy", "make"),
    [
        (FEDAVG, lambda run_id: None),
        ({}, lambda run_id: entry(run_id, 1, "none")),
        (FEDAVG, lambda run_id: entry(run_id, 2)),
        (FEDAVG, lambda run_id: entry("run-other", 1)),
        (FEDAVG, lambda run_id: entry(run_id, 1, "dp_sgd")),
        (FEDAVG, lambda run_id: entry(run_id, 1, epsilon=2.0, cumulative_epsilon=1.0)),
    ],
    ids=["missing", "plain-run", "other-round", "other-run", "other-mechanism", "cumulative"],
)
async def test_a_bad_privacy_entry_is_refused_before_the_body_is_stored(
    harness: Harness, privacy: dict[str, Any], make: Any
) -> None:
    sites, run_id = await opened(harness, 2, privacy=privacy)
    base = await harness.model(run_id, 0)
    task = await harness.task(sites[0])
    assert task is not None
    change = scaled(harness.delta_like(base, seed=1), 0.5)
    body = harness.seal(sites[0], task, change, privacy=make(run_id))
    await refused(harness, harness.upload(sites[0], run_id, 1, body), 422, "bad_privacy_entry")


@pytest.mark.parametrize("claimed", [51, 2**31 - 1, 2**31, 10**12, 2**63], ids=str)
async def test_num_samples_above_the_run_cap_or_the_schema_is_refused(
    harness: Harness, claimed: int
) -> None:
    sites, run_id = await opened(harness, 2, max_num_samples=50)
    base = await harness.model(run_id, 0)
    task = await harness.task(sites[0])
    assert task is not None
    body = harness.seal(sites[0], task, harness.delta_like(base, 1), num_samples=claimed)
    await refused(harness, harness.upload(sites[0], run_id, 1, body), 422, "bad_num_samples")
    body = harness.seal(sites[0], task, harness.delta_like(base, 1), num_samples=50)
    assert (await harness.upload(sites[0], run_id, 1, body)).status_code == 200
