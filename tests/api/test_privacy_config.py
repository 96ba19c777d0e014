"""A run's ``privacy:`` block over HTTP: 422 naming the field, and the task carries it."""

from __future__ import annotations

from typing import Any

import pytest

from shared import routes
from shared.schemas import DpSgdPrivacy
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


async def test_a_valid_mechanism_is_refused_until_the_server_runs_it(harness: Harness) -> None:
    """A schema-valid dp_sgd block is refused (422 naming the field), never run as plain FedAvg.

    The agent and the rounds do not apply the mechanisms yet (docs/privacy.md); a run
    that asked for one must not train without it.
    """
    site = await harness.add_site("site-a")
    before = harness.snapshot()
    privacy = {"mechanism": "dp_sgd", "target_epsilon": 3.0, "delta": 1e-5}
    body = {
        "name": "dp-run",
        "config": {"model": "segresnet-small", "sites": [site.name], "privacy": privacy},
    }
    answer = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert answer.status_code == 422, answer.text
    assert "config.privacy.mechanism" in answer.json()["detail"]
    assert harness.snapshot() == before
    assert DpSgdPrivacy(target_epsilon=3.0, delta=1e-5).mechanism == "dp_sgd"
