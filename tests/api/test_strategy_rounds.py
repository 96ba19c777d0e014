"""Runs with a non-default ``aggregation:`` block close their rounds with that strategy.

Real sealed updates over the ASGI app; each consensus is checked against a NumPy
reference of the strategy, and FedAdam's state against a restart of the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from server.db.engine import sync_url
from server.services.strategies import ServerState, aggregate, from_memory
from shared.aggregation import FedAdam
from shared.arrays import Arrays
from shared.tensors import Tensors
from tests.api.conftest import Harness, Initialised, Site, serving

pytestmark = pytest.mark.anyio


def _numpy(tensors: Tensors) -> Arrays:
    return {name: tensor.numpy() for name, tensor in tensors.items()}


async def _round(
    harness: Harness, sites: list[Site], run_id: str, number: int, counts: list[int], seed: int
) -> list[Arrays]:
    """Every site uploads a random delta for round ``number``; the deltas, in upload order."""
    base = await harness.model(run_id, number - 1)
    deltas = []
    for index, (site, count) in enumerate(zip(sites, counts, strict=True)):
        task = await harness.task(site)
        assert task is not None and task.round == number
        delta = harness.delta_like(base, seed=seed + index)
        answer = await harness.upload(
            site, run_id, number, harness.seal(site, task, delta, num_samples=count)
        )
        assert answer.status_code == 200, answer.text
        deltas.append(_numpy(delta))
    return deltas


def _server_states(harness: Harness) -> list[tuple[int, str | None]]:
    engine = create_engine(sync_url(harness.settings.database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT number, server_state FROM rounds ORDER BY 1"))
            return [(int(number), key) for number, key in rows]
    finally:
        engine.dispose()


async def test_trimmed_mean_closes_with_the_coordinate_wise_trimmed_mean(
    harness: Harness,
) -> None:
    """Five sites, beta 0.2: per coordinate the largest and smallest value are dropped.

    One site uploads a delta x 50 and claims the most cases: by-cases FedAvg would
    follow it; the trimmed mean gives it one vote and cuts its extremes.
    """
    sites = [await harness.add_site(f"site-{index}") for index in range(5)]
    run_id = await harness.create_run(
        sites, rounds=1, aggregation={"strategy": "trimmed_mean", "trim_fraction": 0.2}
    )
    base = _numpy(await harness.model(run_id, 0))
    counts = [10, 20, 30, 40, 50_000]
    deltas = await _round(harness, sites, run_id, 1, counts, seed=7)
    consensus = _numpy(await harness.model(run_id, 1))
    for name, array in base.items():
        values = np.sort(np.stack([delta[name].astype(np.float64) for delta in deltas]), axis=0)
        expected = array.astype(np.float64) + values[1:-1].mean(axis=0)
        np.testing.assert_allclose(consensus[name], expected, rtol=0, atol=1e-6)
    assert _server_states(harness) == [(1, None)]  # no optimiser: nothing kept


async def test_median_closes_with_the_coordinate_wise_median(harness: Harness) -> None:
    sites = [await harness.add_site(f"site-{index}") for index in range(3)]
    run_id = await harness.create_run(sites, rounds=1, aggregation={"strategy": "median"})
    base = _numpy(await harness.model(run_id, 0))
    deltas = await _round(harness, sites, run_id, 1, [5, 6, 7], seed=11)
    consensus = _numpy(await harness.model(run_id, 1))
    for name, array in base.items():
        expected = array + np.median(np.stack([delta[name] for delta in deltas]), axis=0)
        np.testing.assert_allclose(consensus[name], expected, rtol=0, atol=1e-6)


async def test_capped_weighting_gives_a_huge_claim_at_most_its_share(harness: Harness) -> None:
    """site-2 claims 10^5 cases against 10 and 30: it gets exactly max_share (0.5).

    The other half is split 10:30 between the others (water-filling), not by the claim.
    """
    sites = [await harness.add_site(f"site-{index}") for index in range(3)]
    block = {"strategy": "fedavg", "weighting": "capped", "max_share": 0.5}
    run_id = await harness.create_run(sites, rounds=1, aggregation=block)
    base = _numpy(await harness.model(run_id, 0))
    deltas = await _round(harness, sites, run_id, 1, [10, 30, 100_000], seed=3)
    consensus = _numpy(await harness.model(run_id, 1))
    shares = [0.125, 0.375, 0.5]
    for name, array in base.items():
        mean = sum(
            share * delta[name].astype(np.float64)
            for share, delta in zip(shares, deltas, strict=True)
        )
        np.testing.assert_allclose(consensus[name], array + mean, rtol=0, atol=1e-6)
        by_cases = (
            sum(
                count * delta[name].astype(np.float64)
                for count, delta in zip([10, 30, 100_000], deltas, strict=True)
            )
            / 100_040
        )
        assert not np.allclose(consensus[name], array + by_cases, rtol=0, atol=1e-6)


def _adam_reference(
    config: FedAdam, base: Arrays, rounds: list[tuple[list[Arrays], list[int]]]
) -> list[Arrays]:
    """FedAdam by hand (Reddi et al. 2021, Algorithm 2) in float64: each round's weights."""
    m = {name: np.zeros(array.shape) for name, array in base.items()}
    v = {name: np.full(array.shape, config.tau**2) for name, array in base.items()}
    weights = {name: array.astype(np.float64) for name, array in base.items()}
    out = []
    for deltas, counts in rounds:
        for name in weights:
            d = sum(
                c * delta[name].astype(np.float64) for c, delta in zip(counts, deltas, strict=True)
            )
            d = d / sum(counts)
            m[name] = config.beta1 * m[name] + (1 - config.beta1) * d
            v[name] = config.beta2 * v[name] + (1 - config.beta2) * d * d
            step = config.server_learning_rate * m[name] / (np.sqrt(v[name]) + config.tau)
            weights[name] = weights[name] + step
        out.append(dict(weights))
    return out


async def test_fedadam_state_persists_and_survives_a_restart_mid_run(
    initialised: Initialised,
) -> None:
    """The server is restarted after round 1 closed and one of round 2's uploads arrived.

    Round 2 must step from round 1's moments, read back from ``rounds.server_state``:
    the consensus is bit for bit what the library gives carrying the state in memory
    (no restart), and matches FedAdam by hand.
    """
    block: dict[str, Any] = {"strategy": "fedadam", "server_learning_rate": 0.05, "tau": 0.01}
    config = FedAdam.model_validate(block)
    counts = [4, 12, 30]
    async with serving(initialised) as first:
        sites = [await first.add_site(f"site-{index}") for index in range(3)]
        run_id = await first.create_run(sites, rounds=2, aggregation=block)
        base = _numpy(await first.model(run_id, 0))
        round_1 = await _round(first, sites, run_id, 1, counts, seed=21)
        version_1 = _numpy(await first.model(run_id, 1))
        round_2 = await _round(first, sites[:1], run_id, 2, counts[:1], seed=31)
        states = _server_states(first)
        assert states[0][1] is not None and states[1] == (2, None)
    async with serving(initialised) as second:
        for index, site in enumerate(sites[1:], start=1):
            round_2 += await _round(second, [site], run_id, 2, [counts[index]], seed=31 + index)
        version_2 = _numpy(await second.model(run_id, 2))
        states = _server_states(second)
    in_memory = aggregate(
        config, base=base, updates=from_memory(list(zip(round_1, counts, strict=True)))
    )
    assert isinstance(in_memory.state, ServerState)
    assert states[0][1] is not None
    stored = (initialised.settings.blob_dir / states[0][1][:2] / states[0][1]).read_bytes()
    assert stored == in_memory.state.to_bytes()
    for name in base:
        np.testing.assert_array_equal(version_1[name], in_memory.weights[name])
    no_restart = aggregate(
        config,
        base=in_memory.weights,
        updates=from_memory(list(zip(round_2, counts, strict=True))),
        state=in_memory.state,
    )
    assert in_memory.state.step == 2 and states[1][1] is not None
    stored = (initialised.settings.blob_dir / states[1][1][:2] / states[1][1]).read_bytes()
    assert stored == in_memory.state.to_bytes()
    for name in base:
        np.testing.assert_array_equal(version_2[name], no_restart.weights[name])
    by_hand = _adam_reference(config, base, [(round_1, counts), (round_2, counts)])
    for name in base:
        np.testing.assert_allclose(version_1[name], by_hand[0][name], rtol=0, atol=1e-5)
        np.testing.assert_allclose(version_2[name], by_hand[1][name], rtol=0, atol=1e-5)


async def test_the_task_carries_fedprox_mu(harness: Harness) -> None:
    sites = [await harness.add_site("site-a")]
    fedprox = await harness.create_run(sites, aggregation={"strategy": "fedprox", "mu": 0.05})
    task = await harness.task(sites[0])
    assert task is not None and task.run_id == fedprox and task.proximal_mu == 0.05


async def test_a_default_run_task_has_no_proximal_term(harness: Harness) -> None:
    sites = [await harness.add_site("site-a")]
    await harness.create_run(sites)
    task = await harness.task(sites[0])
    assert task is not None and task.proximal_mu == 0.0


async def test_a_failed_fedadam_close_retries_from_the_stored_state(harness: Harness) -> None:
    """Round 2's bundle write fails once: the retry loads round 1's state again.

    Stepping the state of the failed attempt a second time would give other weights.
    """
    services = harness.app.state.services
    real = services.coordinator._blobs
    failed: list[str] = []
    closing_round_2 = [False]

    class BundleFailsOnce:
        def put_bytes(self, data: bytes, key: str | None = None) -> str:
            if key is not None and not failed and closing_round_2[0]:  # a bundle, not a state
                failed.append(key)
                raise OSError("disk full (injected once)")
            return real.put_bytes(data, key)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    services.coordinator._blobs = BundleFailsOnce()
    block: dict[str, Any] = {"strategy": "fedadam", "server_learning_rate": 0.05}
    config = FedAdam.model_validate(block)
    sites = [await harness.add_site(f"site-{index}") for index in range(2)]
    run_id = await harness.create_run(sites, rounds=2, aggregation=block)
    base = _numpy(await harness.model(run_id, 0))
    round_1 = await _round(harness, sites, run_id, 1, [3, 5], seed=1)
    closing_round_2[0] = True
    round_2 = await _round(harness, sites, run_id, 2, [3, 5], seed=2)
    for _ in range(200):  # the ticker (every 50 ms) retries the close
        if dict(_server_states(harness)).get(2) is not None:
            break
        await asyncio.sleep(0.05)
    assert failed
    version_2 = _numpy(await harness.model(run_id, 2))
    first = aggregate(
        config, base=base, updates=from_memory(list(zip(round_1, [3, 5], strict=True)))
    )
    second = aggregate(
        config,
        base=first.weights,
        updates=from_memory(list(zip(round_2, [3, 5], strict=True))),
        state=first.state,
    )
    for name in base:
        np.testing.assert_array_equal(version_2[name], second.weights[name])
