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


async def test_a_valid_strategy_is_kept_with_the_run(harness: Harness) -> None:
    """Every strategy is served now: the block comes back as it was given."""
    await harness.add_site("site-a")
    block = {"strategy": "fedyogi", "server_learning_rate": 0.03, "weighting": "equal"}
    created = await harness.client.post(routes.RUNS, json=_run(block), headers=harness.admin)
    assert created.status_code == 201, created.text
    kept = created.json()["config"]["aggregation"]
    assert {key: kept[key] for key in block} == block


async def test_fedprox_under_dp_sgd_is_refused_naming_the_field(harness: Harness) -> None:
    """The sites' DP-SGD steps have no proximal term: refused, not trained without it."""
    await harness.add_site("site-a")
    body = _run({"strategy": "fedprox", "mu": 0.1})
    body["config"]["privacy"] = {"mechanism": "dp_sgd", "noise_multiplier": 1.0}
    before = harness.snapshot()
    created = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert created.status_code == 422, created.text
    assert "config.aggregation" in created.json()["detail"]
    assert harness.snapshot() == before
    body["config"]["aggregation"] = {"strategy": "fedprox", "mu": 0.0}  # no term: served
    created = await harness.client.post(routes.RUNS, json=body, headers=harness.admin)
    assert created.status_code == 201, created.text
