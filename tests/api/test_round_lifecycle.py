"""Closing and stopping under failure and contention: a failed close is retried, a stop
that races a close never rewrites a decided round, and a long poll is clamped."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from server.storage import BlobStore
from shared import routes
from shared.schemas import RoundInfo, RunInfo, TaskPoll
from tests.api.conftest import Harness, Site, problem_code

pytestmark = pytest.mark.anyio


class _FlakyBlobs:
    """The real blob store, but `put_bytes` can fail once or block until released."""

    def __init__(self, real: BlobStore) -> None:
        self.real = real
        self.fail_next_put_bytes = False
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def put_bytes(self, data: bytes, key: str | None = None) -> str:
        if self.fail_next_put_bytes:
            self.fail_next_put_bytes = False
            raise OSError("disk full (injected once)")
        if self.hold is not None:
            self.entered.set()
            self.hold.wait(10)
        return self.real.put_bytes(data, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _install_flaky_blobs(harness: Harness) -> _FlakyBlobs:
    """Swap the blob store of every service that writes bundles for a `_FlakyBlobs`."""
    services = harness.app.state.services
    flaky = _FlakyBlobs(services.coordinator._blobs)
    for name in ("coordinator", "runs", "intake"):
        service = getattr(services, name, None)
        if service is not None and hasattr(service, "_blobs"):
            service._blobs = flaky
    return flaky


async def _round(harness: Harness, run_id: str, number: int) -> RoundInfo:
    answer = await harness.client.get(
        routes.ROUND.format(run_id=run_id, round=number), headers=harness.admin
    )
    assert answer.status_code == 200, answer.text
    return RoundInfo.model_validate(answer.json())


async def _run(harness: Harness, run_id: str) -> RunInfo:
    answer = await harness.client.get(routes.RUN.format(run_id=run_id), headers=harness.admin)
    assert answer.status_code == 200, answer.text
    return RunInfo.model_validate(answer.json())


async def _upload_all(
    harness: Harness, sites: list[Site], run_id: str, weights: dict[str, int]
) -> dict[str, Any]:
    base = await harness.model(run_id, 0)
    deltas = {}
    for index, site in enumerate(sites[:-1]):
        task = await harness.task(site)
        assert task is not None
        deltas[site.name] = harness.delta_like(base, seed=index)
        body = harness.seal(site, task, deltas[site.name], num_samples=weights[site.name])
        assert (await harness.upload(site, run_id, 1, body)).status_code == 200
    last = sites[-1]
    task = await harness.task(last)
    assert task is not None
    deltas[last.name] = harness.delta_like(base, seed=99)
    return {
        "base": base,
        "deltas": deltas,
        "last_body": harness.seal(last, task, deltas[last.name], num_samples=weights[last.name]),
    }


async def test_a_close_that_fails_once_is_retried_with_the_right_consensus(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=2)
    weights = {"site-a": 3, "site-b": 7}
    prepared = await _upload_all(harness, sites, run_id, weights)
    flaky = _install_flaky_blobs(harness)
    flaky.fail_next_put_bytes = True  # the consensus bundle's write fails once
    answer = await harness.upload(sites[-1], run_id, 1, prepared["last_body"])
    assert answer.status_code == 200, answer.text  # the update itself is safe
    for _ in range(200):  # the ticker (every 50 ms) retries the close
        if (await _round(harness, run_id, 1)).status == "closed":
            break
        await asyncio.sleep(0.05)
    assert (await _round(harness, run_id, 1)).status == "closed"
    assert (await _round(harness, run_id, 2)).status == "open"
    consensus = await harness.model(run_id, 1)
    total = sum(weights.values())
    for name, tensor in prepared["base"].items():
        expected = (
            tensor.double().numpy()
            + sum(
                weights[site] * prepared["deltas"][site][name].double().numpy() for site in weights
            )
            / total
        )
        np.testing.assert_allclose(consensus[name].numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rounds", [1, 2])
async def test_a_stop_that_races_a_close_never_rewrites_the_closed_round(
    harness: Harness, rounds: int
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=rounds)
    prepared = await _upload_all(harness, sites, run_id, {"site-a": 1, "site-b": 1})
    flaky = _install_flaky_blobs(harness)
    flaky.hold = threading.Event()
    upload = asyncio.create_task(harness.upload(sites[-1], run_id, 1, prepared["last_body"]))
    try:
        while not flaky.entered.is_set():  # the close holds the round lock, writing the bundle
            await asyncio.sleep(0.01)
        stop = asyncio.create_task(
            harness.client.post(routes.RUN_STOP.format(run_id=run_id), headers=harness.admin)
        )
        await asyncio.sleep(0.2)  # the stop has read the run and now waits for the lock
    finally:
        flaky.hold.set()
    assert (await upload).status_code == 200
    stopped = await stop
    assert (await _round(harness, run_id, 1)).status == "closed"
    run = await _run(harness, run_id)
    if rounds == 1:  # the close finished the run: nothing is left to stop
        assert stopped.status_code == 409 and problem_code(stopped) == "run_state"
        assert run.status == "completed"
    else:  # the stop cancels the run and the round the close opened
        assert stopped.status_code == 200, stopped.text
        assert run.status == "cancelled"
        assert (await _round(harness, run_id, 2)).status == "cancelled"
        assert all(site_task is None for site_task in [await harness.task(s) for s in sites])


async def test_a_poll_longer_than_the_server_allows_is_clamped_not_refused(
    harness: Harness,
) -> None:
    site = await harness.add_site("site-a")
    assert harness.settings.max_wait_s < 300
    started = asyncio.get_running_loop().time()
    answer = await harness.client.get(
        routes.TASKS_NEXT, params={"wait": 300}, headers=site.headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert TaskPoll.model_validate(answer.json()).task is None
    # held for at most the server's own limit, not the 300 s asked for
    assert asyncio.get_running_loop().time() - started < harness.settings.max_wait_s + 5


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        ({"num_samples": 0}, 422, "bad_num_samples"),
        ({"base_weights_sha256": "0" * 64}, 422, "base_model_mismatch"),
        ({"site": "site-b"}, 403, "wrong_site"),
        ({"round": 7}, 422, "invalid_input"),
    ],
)
async def test_the_header_is_checked_before_the_body_is_read(
    harness: Harness, header: dict[str, Any], status: int, code: str
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=1)
    task = await harness.task(sites[0])
    assert task is not None
    base = await harness.model(run_id, 0)
    body = harness.seal(sites[0], task, harness.delta_like(base, 1), **header)
    pulled = []

    async def slowly() -> Any:
        for start in range(0, len(body), 512):
            pulled.append(start)
            yield body[start : start + 512]

    answer = await harness.upload(sites[0], run_id, 1, slowly())
    assert answer.status_code == status and problem_code(answer) == code
    assert len(pulled) <= 4 < len(body) // 512  # the front (header) only, not the payload
