"""The ``aggregation:`` block over HTTP: a bad one is a 422 naming the field; a good one is kept."""

from __future__ import annotations

from typing import Any

import pytest

from shared import routes
from tests.api.conftest import Harness, problem_code

pytestmark = pytest.mark.anyio


def _run(aggregation: dict[str, Any]) -> dict[str, Any]:
    return {"name": "r", "config": {"sites": ["site-a"], "aggregation": aggregation}}


async def test_bad_aggregation_blocks_are_422_naming_the_field(harness: Harness) -> None:
    await harness.add_site("site-a")
    cases = [
        ({"strategy": "fedadam", "mu": 0.1}, "extra_field", "config.aggregation.fedadam.mu"),
        ({"strategy": "krum"}, "invalid_input", "config.aggregation"),
        (
            {"strategy": "trimmed_mean", "trim_fraction": 0.7},
            "invalid_input",
            "config.aggregation.trimmed_mean.trim_fraction",
        ),
        ({"weighting": "capped"}, "invalid_input", "max_share"),
    ]
    for block, code, where in cases:
        before = harness.snapshot()
        answer = await harness.client.post(routes.RUNS, json=_run(block), headers=harness.admin)
        assert answer.status_code == 422, answer.text
        assert problem_code(answer) == code
        assert where in answer.json()["detail"]
        assert harness.snapshot() == before


async def test_a_valid_strategy_is_refused_until_the_server_runs_it(harness: Harness) -> None:
    """Schema-valid, but the rounds aggregate with FedAvg only: 422 naming the field."""
    await harness.add_site("site-a")
    before = harness.snapshot()
    block = {"strategy": "fedyogi", "server_learning_rate": 0.03, "weighting": "equal"}
    created = await harness.client.post(routes.RUNS, json=_run(block), headers=harness.admin)
    assert created.status_code == 422, created.text
    assert "config.aggregation" in created.json()["detail"]
    assert harness.snapshot() == before
