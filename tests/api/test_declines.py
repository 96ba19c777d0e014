"""Signed declines over HTTP: verified first, recorded once, shown, and the round settles.

A round goes on without a site that declined while the quorum of uploads is reachable;
once it is not, the run ends ``budget_exhausted`` when every site left out declined for
budget, and fails (naming the declines) otherwise. A restart keeps the declines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.app import create_app
from shared import crypto, routes
from shared.privacy import Decline, DeclineReceipt, sign_decline
from shared.schemas import RoundInfo, RunInfo
from tests.api.conftest import Harness, Initialised, Site, problem_code

pytestmark = pytest.mark.anyio


def signed(
    sender: Site,
    run: str,
    number: int,
    reason: str = "budget_exhausted",
    *,
    key: Ed25519PrivateKey | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A decline signed by ``key`` (the sender's own by default), as JSON."""
    values: dict[str, Any] = {
        "run_id": run,
        "round": number,
        "site": sender.name,
        "reason": reason,
        "message": f"{sender.name} will not train: {reason}",
        "cumulative_epsilon": 7.5,
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    return sign_decline(Decline(**values), key or sender.key).model_dump(mode="json")


async def decline(
    harness: Harness, site: Site, run_id: str, number: int, body: dict[str, Any]
) -> httpx.Response:
    return await harness.client.post(
        routes.DECLINE.format(run_id=run_id, round=number), json=body, headers=site.headers
    )


async def round_info(harness: Harness, run_id: str, number: int) -> RoundInfo:
    answer = await harness.client.get(
        routes.ROUND.format(run_id=run_id, round=number), headers=harness.admin
    )
    assert answer.status_code == 200, answer.text
    return RoundInfo.model_validate(answer.json())


async def run_info(harness: Harness, run_id: str) -> RunInfo:
    answer = await harness.client.get(routes.RUN.format(run_id=run_id), headers=harness.admin)
    assert answer.status_code == 200, answer.text
    return RunInfo.model_validate(answer.json())


async def audit(harness: Harness, action: str) -> list[dict[str, Any]]:
    answer = await harness.client.get(routes.AUDIT, params={"limit": 1000}, headers=harness.admin)
    return [event for event in answer.json() if event["action"] == action]


async def upload(harness: Harness, site: Site, run_id: str, seed: int, samples: int) -> Any:
    task = await harness.task(site)
    assert task is not None
    base = await harness.model(run_id, task.round - 1)
    change = harness.delta_like(base, seed=seed)
    answer = await harness.upload(
        site, run_id, task.round, harness.seal(site, task, change, num_samples=samples)
    )
    assert answer.status_code == 200, answer.text
    return change


async def test_a_decline_is_recorded_once_shown_and_audited(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, rounds=1, min_sites=2)
    body = signed(sites[0], run_id, 1, "too_few_cases", cumulative_epsilon=None)
    answer = await decline(harness, sites[0], run_id, 1, body)
    assert answer.status_code == 200, answer.text
    receipt = DeclineReceipt.model_validate(answer.json())
    assert (receipt.run_id, receipt.round, receipt.site, receipt.reason) == (
        run_id,
        1,
        "site-a",
        "too_few_cases",
    )
    # the same decline again (even signed anew) is the same receipt; nothing more is written
    before = harness.snapshot()
    again = await decline(
        harness, sites[0], run_id, 1, signed(sites[0], run_id, 1, "too_few_cases")
    )
    assert again.status_code == 200 and again.json() == answer.json()
    assert harness.snapshot() == before
    # another reason for the same round is a conflict
    other = await decline(harness, sites[0], run_id, 1, signed(sites[0], run_id, 1))
    assert other.status_code == 409 and problem_code(other) == "decline_conflict"
    assert harness.snapshot() == before
    progress = {item.site: item for item in (await round_info(harness, run_id, 1)).sites}
    assert progress["site-a"].state == "declined"
    assert progress["site-a"].decline_reason == "too_few_cases"
    assert progress["site-a"].message == "site-a will not train: too_few_cases"
    assert progress["site-b"].state == "waiting"
    assert await harness.task(sites[0]) is None  # nothing is owed for a declined round
    (event,) = await audit(harness, "site.declined")
    assert event["actor"] == "site:site-a" and event["detail"]["reason"] == "too_few_cases"
    metrics = (await harness.client.get(routes.METRICS)).text
    assert 'fedseg_declines_total{reason="too_few_cases"} 1.0' in metrics


async def test_the_round_goes_on_without_a_declined_site_under_min_sites(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, rounds=1, min_sites=2)
    assert (await decline(harness, sites[1], run_id, 1, signed(sites[1], run_id, 1))).is_success
    base = await harness.model(run_id, 0)
    changes = {
        site.name: await upload(harness, site, run_id, seed, samples)
        for site, seed, samples in ((sites[0], 1, 3), (sites[2], 2, 9))
    }
    assert (await round_info(harness, run_id, 1)).status == "closed"
    assert (await run_info(harness, run_id)).status == "completed"
    consensus = await harness.model(run_id, 1)
    for name, tensor in base.items():
        expected = (
            tensor.double().numpy()
            + (
                3 * changes["site-a"][name].double().numpy()
                + 9 * changes["site-c"][name].double().numpy()
            )
            / 12
        )
        np.testing.assert_allclose(consensus[name].numpy(), expected, rtol=0, atol=1e-6)


async def test_every_site_declining_for_budget_ends_the_run_budget_exhausted(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=3)
    await upload(harness, sites[0], run_id, 1, 5)
    await upload(harness, sites[1], run_id, 2, 5)  # round 1 closes, round 2 opens
    first = await decline(harness, sites[0], run_id, 2, signed(sites[0], run_id, 2))
    assert first.status_code == 200
    # the quorum is out of reach, but site-b may still decline for budget: the run waits
    assert (await run_info(harness, run_id)).status == "running"
    reason = "run_budget_exhausted"
    second = await decline(harness, sites[1], run_id, 2, signed(sites[1], run_id, 2, reason))
    assert second.status_code == 200
    run = await run_info(harness, run_id)
    assert run.status == "budget_exhausted" and run.finished_at is not None
    decided = await round_info(harness, run_id, 2)
    assert decided.status == "cancelled"
    assert {item.site: item.decline_reason for item in decided.sites} == {
        "site-a": "budget_exhausted",
        "site-b": "run_budget_exhausted",
    }
    (ended,) = await audit(harness, "run.budget_exhausted")
    assert "site-a (budget_exhausted)" in ended["detail"]["reason"]
    assert "site-b (run_budget_exhausted)" in ended["detail"]["reason"]
    assert [
        item["version"]
        for item in (
            await harness.client.get(routes.MODELS.format(run_id=run_id), headers=harness.admin)
        ).json()
    ] == [0, 1]  # the run keeps the model it has
    late = await decline(harness, sites[0], run_id, 2, signed(sites[0], run_id, 2))
    assert late.status_code == 200  # a repeat after the end is still the same receipt


async def test_a_non_budget_decline_below_quorum_fails_the_run_naming_it(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, rounds=1, min_sites=3)
    body = signed(sites[0], run_id, 1, "policy_mechanism")
    assert (await decline(harness, sites[0], run_id, 1, body)).status_code == 200
    run = await run_info(harness, run_id)
    assert run.status == "failed"  # no need to wait: nothing can save the quorum now
    assert (await round_info(harness, run_id, 1)).status == "failed"
    (failed,) = await audit(harness, "round.failed")
    assert failed["detail"]["reason"] == "0 of 3 updates; declined: site-a (policy_mechanism)"


async def test_mixed_declines_below_quorum_fail_not_budget_exhausted(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=1)
    assert (await decline(harness, sites[0], run_id, 1, signed(sites[0], run_id, 1))).is_success
    assert (await run_info(harness, run_id)).status == "running"
    body = signed(sites[1], run_id, 1, "batch_too_small")
    assert (await decline(harness, sites[1], run_id, 1, body)).is_success
    assert (await run_info(harness, run_id)).status == "failed"


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"site": "site-b"}, 403, "wrong_site"),
        ({"round": 2}, 422, "invalid_input"),
        ({"run_id": "run-other"}, 422, "invalid_input"),
        ({"message": "nul \x00 byte"}, 422, "invalid_input"),
    ],
    ids=["other-site", "other-round", "other-run", "nul"],
)
async def test_a_decline_that_does_not_match_its_path_or_site_is_refused(
    harness: Harness, change: dict[str, Any], status: int, code: str
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=2)
    before = harness.snapshot()
    answer = await decline(harness, sites[0], run_id, 1, signed(sites[0], run_id, 1, **change))
    assert answer.status_code == status and problem_code(answer) == code, answer.text
    assert harness.snapshot() == before


async def test_a_forged_decline_is_refused_before_anything_else(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=1)
    before = harness.snapshot()
    # signed by site-b's key but sent with site-a's credential and naming site-a
    forged = signed(sites[0], run_id, 1, key=sites[1].key)
    answer = await decline(harness, sites[0], run_id, 1, forged)
    assert answer.status_code == 400 and problem_code(answer) == "bad_signature"
    # the right key id, but the decline was changed after signing
    tampered = signed(sites[0], run_id, 1)
    tampered["decline"]["reason"] = "too_few_cases"
    answer = await decline(harness, sites[0], run_id, 1, tampered)
    assert answer.status_code == 400 and problem_code(answer) == "bad_signature"
    # a valid signature of a fresh key the server never enrolled
    stranger = signed(sites[0], run_id, 1, key=crypto.generate_signing_key())
    answer = await decline(harness, sites[0], run_id, 1, stranger)
    assert answer.status_code == 400 and problem_code(answer) == "bad_signature"
    # verified before the run is looked up: an unknown run still says bad_signature
    unknown = signed(sites[0], "run-nope", 1, key=sites[1].key)
    answer = await decline(harness, sites[0], "run-nope", 1, unknown)
    assert answer.status_code == 400 and problem_code(answer) == "bad_signature"
    assert harness.snapshot() == before
    no_auth = await harness.client.post(
        routes.DECLINE.format(run_id=run_id, round=1), json=signed(sites[0], run_id, 1)
    )
    assert no_auth.status_code == 401


async def test_a_decline_after_an_upload_or_outside_an_open_round_is_refused(
    harness: Harness,
) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b")]
    run_id = await harness.create_run(sites, rounds=2)
    await upload(harness, sites[0], run_id, 1, 4)
    answer = await decline(harness, sites[0], run_id, 1, signed(sites[0], run_id, 1))
    assert answer.status_code == 409 and problem_code(answer) == "decline_conflict"
    answer = await decline(harness, sites[0], run_id, 2, signed(sites[0], run_id, 2))
    assert answer.status_code == 409 and problem_code(answer) == "round_not_open"
    answer = await decline(harness, sites[0], run_id, 7, signed(sites[0], run_id, 7))
    assert answer.status_code == 404 and problem_code(answer) == "unknown_round"
    await upload(harness, sites[1], run_id, 2, 4)  # round 1 closes
    answer = await decline(harness, sites[1], run_id, 1, signed(sites[1], run_id, 1))
    assert answer.status_code == 409 and problem_code(answer) == "decline_conflict"
    outsider = await harness.add_site("site-z")
    answer = await decline(harness, outsider, run_id, 2, signed(outsider, run_id, 2))
    assert answer.status_code == 403 and problem_code(answer) == "forbidden"


async def test_declines_survive_a_restart_and_still_decide_the_round(
    initialised: Initialised,
) -> None:
    settings = initialised.settings

    async def serving() -> Any:
        app = create_app(settings)
        return app, app.router.lifespan_context(app)

    app, lifespan = await serving()
    async with lifespan:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = Harness(app, client, settings, initialised.admin_token)
            sites = [await first.add_site(name) for name in ("site-a", "site-b")]
            run_id = await first.create_run(sites, rounds=1)
            answer = await decline(first, sites[0], run_id, 1, signed(sites[0], run_id, 1))
            assert answer.status_code == 200
            first.close()
    app, lifespan = await serving()
    async with lifespan:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            second = Harness(app, client, settings, initialised.admin_token)
            assert (await run_info(second, run_id)).status == "running"
            again = await decline(second, sites[0], run_id, 1, signed(sites[0], run_id, 1))
            assert again.json() == answer.json()  # the same receipt after the restart
            body = signed(sites[1], run_id, 1)
            assert (await decline(second, sites[1], run_id, 1, body)).status_code == 200
            assert (await run_info(second, run_id)).status == "budget_exhausted"
            second.close()


async def test_a_site_that_declined_a_round_cannot_also_upload_to_it(harness: Harness) -> None:
    sites = [await harness.add_site(name) for name in ("site-a", "site-b", "site-c")]
    run_id = await harness.create_run(sites, rounds=1, min_sites=2)
    task = await harness.task(sites[0])  # taken before it declined
    assert task is not None
    assert (await decline(harness, sites[0], run_id, 1, signed(sites[0], run_id, 1))).is_success
    base = await harness.model(run_id, 0)
    body = harness.seal(sites[0], task, harness.delta_like(base, 1))
    before = harness.snapshot()
    answer = await harness.upload(sites[0], run_id, 1, body)
    assert answer.status_code == 409 and problem_code(answer) == "decline_conflict"
    assert harness.snapshot() == before
    assert (await round_info(harness, run_id, 1)).status == "open"  # still owed by b and c
