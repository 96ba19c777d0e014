"""A run's ``privacy:`` block over HTTP: 422 naming the field, and the task carries it."""

from __future__ import annotations

from typing import Any

import pytest

from shared import routes
from tests.api.conftest import Harness, problem_code

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("privacy", "field"),
    [
        ({"mechanism": "dp_sgd", "noise_multiplier": -1}, "privacy.dp_sgd.noise_multiplier"),
        ({"mechanism": "svt", "epsilon": 0}, "privacy.svt.epsilon"),
        ({"delta": 1}, "privacy.none.delta"),
        ({"mechanism": "svt", "epsilon": 1, "fraction": 1.5}, "privacy.svt.fraction"),
        (
            {"mechanism": "dp_fedavg", "clip_norm": 0, "noise_multiplier": 1},
            "privacy.dp_fedavg.clip_norm",
        ),
        ({"mechanism": "laplace-ish"}, "privacy: mechanism must be one of"),
    ],
)
async def test_a_bad_privacy_block_gets_422_naming_the_field(
    harness: Harness, privacy: dict[str, Any], field: str
) -> None:
    site = await harness.add_site("site-a")
    before = harness.snapshot()
    body = {"name": "r", "config": {"sites": [site.name], "privacy": privacy}}
    answer = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert answer.status_code == 422, answer.text
    assert problem_code(answer) == "invalid_input"
    assert field in answer.json()["detail"]
    assert harness.snapshot() == before


@pytest.mark.parametrize(
    "privacy",
    [
        {"mechanism": "dp_sgd", "target_epsilon": 3.0, "delta": 1e-5},
        {"mechanism": "dp_fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0},
        {"mechanism": "svt", "epsilon": 1.0, "fraction": 0.1},
    ],
    ids=["dp_sgd", "dp_fedavg", "svt"],
)
async def test_a_dp_mechanism_is_served_and_every_task_carries_it(
    harness: Harness, privacy: dict[str, Any]
) -> None:
    """The sites run the mechanisms now: the run is accepted and its tasks say which one."""
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site], rounds=1, privacy=privacy)
    task = await harness.task(site)
    assert task is not None and task.run_id == run_id
    assert task.privacy.mechanism == privacy["mechanism"]
    carried = task.privacy.model_dump()
    assert {name: carried[name] for name in privacy} == privacy


async def test_secure_aggregation_is_still_refused(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    before = harness.snapshot()
    body = {"name": "r", "config": {"sites": [site.name], "secure_aggregation": {}}}
    answer = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert answer.status_code == 422, answer.text
    assert "secure_aggregation" in answer.json()["detail"]
    assert harness.snapshot() == before
