"""Hostile values in fields that get stored: metrics, status messages, run configs.

Each is refused with 422 (or the envelope's 400) naming the field, on SQLite and on
PostgreSQL, and leaves every row and blob as it was.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import crypto, routes
from shared.schemas import FORMAT_VERSION, UpdateHeader
from shared.updates import seal_update
from tests.api.conftest import TINY_MODEL, Harness, Site, problem_code

pytestmark = pytest.mark.anyio


async def _opened(h: Harness) -> tuple[Site, str]:
    site = await h.add_site("site-a")
    other = await h.add_site("site-b")
    run_id = await h.create_run([site, other], rounds=2)
    return site, run_id


async def _refused(h: Harness, response: Any, status: int, code: str, field: str) -> None:
    before = h.snapshot()
    answer = await response
    assert answer.status_code == status, answer.text
    assert problem_code(answer) == code
    assert field in answer.json()["detail"], answer.json()
    assert h.snapshot() == before


def _status_body(run_id: str, **fields: Any) -> str:
    body = {"run_id": run_id, "round": 1, "state": "training", **fields}
    return json.dumps(body)  # json.dumps writes NaN and Infinity, as a hostile site might


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"metrics": {"dice_mean": math.nan}}, "metrics.dice_mean"),
        ({"metrics": {"dice_mean": math.inf}}, "metrics.dice_mean"),
        ({"metrics": {"train_loss": -math.inf}}, "metrics.train_loss"),
        # 65 is one over the bound; a 4 MB report of 200,000 is refused earlier, by the
        # body limit (413: tests/api/test_edge.py)
        ({"metrics": {f"m{i}": 0.5 for i in range(65)}}, "metrics"),
        ({"metrics": {"x" * 65: 0.5}}, "metrics"),
        ({"metrics": {"dice\x00": 0.5}}, "metrics"),
        ({"message": "stuck\x00here"}, "message"),
        ({"message": "x" * 2001}, "message"),
    ],
    ids=["nan", "inf", "minus-inf", "too-many", "long-name", "nul-name", "nul-message", "long"],
)
async def test_status_reports_hold_finite_bounded_metrics_and_no_nul(
    harness: Harness, fields: dict[str, Any], where: str
) -> None:
    site, run_id = await _opened(harness)
    request = harness.client.post(
        routes.STATUS,
        content=_status_body(run_id, **fields),
        headers={**site.headers, "Content-Type": "application/json"},
    )
    await _refused(harness, request, 422, "invalid_input", where)


async def test_a_nul_in_the_status_run_id_is_refused_not_a_500(harness: Harness) -> None:
    site, run_id = await _opened(harness)
    request = harness.client.post(
        routes.STATUS,
        content=_status_body(run_id + "\x00"),
        headers={**site.headers, "Content-Type": "application/json"},
    )
    await _refused(harness, request, 422, "invalid_input", "run_id")


async def test_a_valid_status_report_is_stored_and_served(harness: Harness) -> None:
    site, run_id = await _opened(harness)
    sent = await harness.client.post(
        routes.STATUS,
        content=_status_body(run_id, metrics={"dice_mean": 0.25}, message="ok"),
        headers={**site.headers, "Content-Type": "application/json"},
    )
    assert sent.status_code == 204, sent.text
    shown = await harness.client.get(
        routes.ROUND.format(run_id=run_id, round=1), headers=harness.admin
    )
    progress = {item["site"]: item for item in shown.json()["sites"]}
    assert progress["site-a"]["metrics"] == {"dice_mean": 0.25}


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
async def test_non_finite_metrics_in_an_update_header_are_refused(
    harness: Harness, value: float
) -> None:
    site, run_id = await _opened(harness)
    task = await harness.task(site)
    assert task is not None
    base = await harness.model(run_id, 0)
    header = UpdateHeader.model_construct(  # skips validation, as a hostile client would
        format_version=FORMAT_VERSION,
        run_id=run_id,
        round=1,
        site=site.name,
        base_weights_sha256=task.weights_sha256,
        kind="delta",
        num_samples=10,
        metrics={"dice_mean": value},
        created_at=datetime.now(UTC),
    )
    round_key = crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key))
    body = seal_update(header, harness.delta_like(base, 1), round_key=round_key, site_key=site.key)
    request = harness.upload(site, run_id, 1, body)
    await _refused(harness, request, 400, "malformed_envelope", "metrics.dice_mean")


# --- run configuration -------------------------------------------------------------------


def _run(**config: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "config": {"sites": ["site-a"], "model_params": TINY_MODEL, "rounds": 1, **config},
    }


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"seed": 2**63}, "config.seed"),
        ({"seed": 2**66}, "config.seed"),
        ({"seed": -1}, "config.seed"),
        ({"training": {"seed": 2**64}}, "config.training.seed"),
        ({"model_params": {"in_channels": 10**9, **TINY_MODEL}}, "model_params.in_channels"),
        ({"model_params": {"blocks_down": [10**6], "blocks_up": []}}, "model_params.blocks_down"),
        ({"model_params": {"blocks_down": [1, 1], "blocks_up": []}}, "blocks_up"),
        (
            {"model_params": {"init_filters": 128, "blocks_down": [4] * 6, "blocks_up": [1] * 5}},
            "parameters",
        ),
    ],
    ids=[
        "seed-2^63",
        "seed-2^66",
        "seed-negative",
        "training-seed",
        "channels",
        "blocks",
        "up-down",
        "too-big",
    ],
)
async def test_absurd_run_configs_are_refused_at_creation(
    harness: Harness, config: dict[str, Any], where: str
) -> None:
    await harness.add_site("site-a")
    request = harness.client.post(routes.RUNS, json=_run(**config), headers=harness.admin)
    await _refused(harness, request, 422, "invalid_input", where)


async def test_the_largest_seed_still_starts(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    run_id = await harness.create_run([site], rounds=1, seed=2**63 - 1)
    assert (await harness.task(site)) is not None, run_id
