"""The run's ``secure_aggregation`` option: defaults, every refusal naming its field, the 422."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from server.api import problems
from shared.schemas import RunConfig, RunCreate
from shared.secagg import config as config_module
from shared.secagg.config import (
    SecureAggregationConfig,
    check_run,
    neighbourhood_size,
    resolve_threshold,
    weight_cap,
)

SITES = ["a", "b", "c", "d", "e"]


def config(**secure: Any) -> dict[str, Any]:
    return {"sites": SITES, "min_sites": 4, "secure_aggregation": secure}


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    return str(info.value)


@pytest.fixture
def server_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """As once the round machine runs the protocol (issue 12, phase 2)."""
    monkeypatch.setattr(config_module, "SERVER_RUNS_IT", True)


def test_default_run_has_no_secure_aggregation() -> None:
    assert RunConfig(sites=SITES).secure_aggregation is None


def test_a_valid_option_is_refused_while_the_server_does_not_run_it() -> None:
    message = refusal(config(threshold=3))
    assert "secure_aggregation is valid but this server does not run it yet" in message
    assert "would see each site's update" in message


@pytest.mark.usefixtures("server_runs_it")
def test_defaults_are_usable_and_threshold_follows_the_quorum() -> None:
    run = RunConfig.model_validate(config())
    secure = run.secure_aggregation
    assert secure == SecureAggregationConfig()
    assert (secure.bits, secure.clip_range, secure.neighbours) == (16, 0.05, 16)
    assert resolve_threshold(secure, sites=5, quorum=run.quorum) == 4
    explicit = SecureAggregationConfig(threshold=3)
    assert resolve_threshold(explicit, sites=5, quorum=4) == 3


def test_threshold_default_is_capped_by_a_neighbourhood_above_sixteen_sites() -> None:
    secure = SecureAggregationConfig(neighbours=5)  # rounded up to 6: 7 holders per site
    assert neighbourhood_size(secure, 40) == 7
    assert neighbourhood_size(secure, 16) == 16
    assert resolve_threshold(secure, sites=40, quorum=30) == 7


@pytest.mark.parametrize(
    ("secure", "field"),
    [
        ({"threshold": 1}, "threshold"),
        ({"bits": 4}, "bits"),
        ({"bits": 32}, "bits"),
        ({"clip_range": 0}, "clip_range"),
        ({"neighbours": 1}, "neighbours"),
        ({"colluders": 2}, "colluders"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(
    secure: dict[str, Any], field: str
) -> None:
    message = refusal(config(**secure))
    assert f"secure_aggregation.{field}" in message


def test_fewer_than_three_sites_refused() -> None:
    message = refusal({"sites": ["a", "b"], "secure_aggregation": {}})
    assert "secure_aggregation needs at least 3 sites" in message


@pytest.mark.usefixtures("server_runs_it")
def test_min_sites_of_one_refused() -> None:
    message = refusal({"sites": SITES, "min_sites": 1, "secure_aggregation": {}})
    assert "min_sites (1) must be at least 2 with secure_aggregation" in message


@pytest.mark.usefixtures("server_runs_it")
def test_threshold_above_min_sites_refused() -> None:
    message = refusal(config(threshold=5))
    assert "secure_aggregation.threshold (5) cannot exceed min_sites (4)" in message
    RunConfig.model_validate(config(threshold=4))


def test_threshold_above_a_neighbourhood_refused() -> None:
    sites = [f"s{i:02d}" for i in range(30)]
    data = {
        "sites": sites,
        "min_sites": 20,
        "secure_aggregation": {"threshold": 10, "neighbours": 6},
    }
    assert "secure_aggregation.threshold (10) cannot exceed a site's neighbourhood (7" in refusal(
        data
    )


@pytest.mark.usefixtures("server_runs_it")
def test_neighbours_at_or_above_the_site_count_refused_above_sixteen() -> None:
    sites = [f"s{i:02d}" for i in range(20)]
    data = {"sites": sites, "secure_aggregation": {"threshold": 3, "neighbours": 20}}
    assert "secure_aggregation.neighbours (20, rounded up to even) must be below" in refusal(data)
    odd = {"sites": sites[:18], "secure_aggregation": {"threshold": 3, "neighbours": 17}}
    assert "neighbours (17, rounded up to even) must be below the number of sites (18)" in refusal(
        odd
    )
    RunConfig.model_validate({"sites": sites[:18], "secure_aggregation": {"neighbours": 16}})


def test_bits_too_large_for_the_sites_refused() -> None:
    sites = [f"s{i:03d}" for i in range(300)]
    data = {"sites": sites, "secure_aggregation": {"threshold": 3, "bits": 24, "neighbours": 4}}
    assert "secure_aggregation.bits (24) is too large for 300 sites" in refusal(data)


@pytest.mark.parametrize("aggregator", ["trimmed_mean", "median", "krum", "norm_bound"])
def test_aggregations_that_need_one_update_are_refused(aggregator: str) -> None:
    with pytest.raises(ValueError, match=f"aggregator '{aggregator}'.*sees only their sum"):
        check_run(SecureAggregationConfig(), sites=5, quorum=5, aggregator=aggregator)
    check_run(SecureAggregationConfig(), sites=5, quorum=5, aggregator="fedavg")


def test_server_side_norm_check_is_refused() -> None:
    with pytest.raises(ValueError, match=r"server-side norm check.*clip at the site"):
        check_run(SecureAggregationConfig(), sites=5, quorum=5, server_norm_check=True)


def test_weight_cap_keeps_the_sum_inside_a_signed_32_bit_integer() -> None:
    for bits in (8, 16, 20, 24):
        for sites in (3, 8, 32):
            cap = weight_cap(bits=bits, sites=sites)
            assert cap * sites * ((1 << (bits - 1)) - 1) < 2**31
            assert (cap + 1) * sites * ((1 << (bits - 1)) - 1) >= 2**31 - sites * (1 << (bits - 1))
    assert weight_cap(bits=16, sites=8) == 8192


@pytest.mark.anyio
@pytest.mark.usefixtures("server_runs_it")
async def test_the_api_answers_422_naming_the_field() -> None:
    app = FastAPI()
    problems.install(app)

    @app.post("/runs")
    async def create(body: RunCreate) -> dict[str, str]:  # the real request model
        return {"name": body.name}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        bad = await client.post("/runs", json={"name": "r", "config": config(threshold=5)})
        good = await client.post("/runs", json={"name": "r", "config": config(threshold=3)})
    assert bad.status_code == 422
    body = bad.json()
    assert body["code"] == "invalid_input"
    assert "secure_aggregation.threshold (5) cannot exceed min_sites (4)" in body["detail"]
    assert good.status_code == 200
