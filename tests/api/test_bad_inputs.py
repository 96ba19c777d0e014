"""Bad inputs: each gets its problem+json code, and leaves the database and blobs unchanged.

"Unchanged" is every row of every table except the append-only audit log (which
records rejections on purpose), every blob file, and every key file.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared import crypto, routes
from shared.schemas import Task
from shared.tensors import Tensors
from tests.api.conftest import Harness, Site, problem_code

pytestmark = pytest.mark.anyio


@dataclass
class OpenRound:
    harness: Harness
    a: Site
    b: Site
    run_id: str
    task_a: Task
    task_b: Task
    base: Tensors


@pytest.fixture
async def opened(harness: Harness) -> OpenRound:
    """Two enrolled sites in a started run: round 1 open, nothing uploaded yet."""
    a = await harness.add_site("site-a")
    b = await harness.add_site("site-b")
    run_id = await harness.create_run([a, b], rounds=3)
    task_a, task_b = await harness.task(a), await harness.task(b)
    assert task_a is not None and task_b is not None
    return OpenRound(harness, a, b, run_id, task_a, task_b, await harness.model(run_id, 0))


async def _rejected(harness: Harness, request: Any, status: int, code: str) -> None:
    """Run ``request`` (a coroutine), expect ``status``/``code``, and no change anywhere."""
    before = harness.snapshot()
    response = await request
    assert response.status_code == status, response.text
    assert problem_code(response) == code
    assert harness.snapshot() == before


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- authentication ------------------------------------------------------------------


async def test_no_token(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    await _rejected(
        h,
        h.client.put(routes.UPDATES.format(run_id=opened.run_id, round=1), content=body),
        401,
        "unauthenticated",
    )


async def test_wrong_token(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    wrong = Site(opened.a.name, opened.a.key, opened.a.credential[:-4] + "AAAA")
    await _rejected(h, h.upload(wrong, opened.run_id, 1, body), 401, "bad_token")
    await _rejected(
        h, h.client.get(routes.SITES, headers={"Authorization": "Basic x"}), 401, "bad_token"
    )


async def test_revoked_site(opened: OpenRound) -> None:
    h = opened.harness
    revoked = await h.client.post(routes.SITE_REVOKE.format(name="site-a"), headers=h.admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 401, "token_revoked")
    await _rejected(
        h, h.client.get(routes.TASKS_NEXT, headers=opened.a.headers), 401, "token_revoked"
    )


async def test_site_acting_as_another_site(opened: OpenRound) -> None:
    h = opened.harness
    # site A's credential, an envelope that names site B (signed by A or by B: both refused)
    as_b = h.seal(opened.b, opened.task_b, h.delta_like(opened.base, 1))
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, as_b), 403, "wrong_site")
    forged = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1), site="site-b")
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, forged), 403, "wrong_site")


async def test_viewer_and_site_cannot_administer(opened: OpenRound) -> None:
    from server.bootstrap import create_token

    h = opened.harness
    viewer = await asyncio.to_thread(create_token, h.settings, role="viewer", label="v")
    headers = {"Authorization": f"Bearer {viewer}"}
    assert (await h.client.get(routes.SITES, headers=headers)).status_code == 200
    await _rejected(
        h, h.client.post(routes.SITES, json={"name": "x"}, headers=headers), 403, "forbidden"
    )
    await _rejected(
        h,
        h.client.post(routes.RUN_STOP.format(run_id=opened.run_id), headers=headers),
        403,
        "forbidden",
    )
    await _rejected(h, h.client.get(routes.RUNS, headers=opened.a.headers), 403, "forbidden")


async def test_site_outside_the_run(opened: OpenRound) -> None:
    h = opened.harness
    outsider = await h.add_site("site-z")
    body = h.seal(outsider, opened.task_a, h.delta_like(opened.base, 1), site="site-z")
    await _rejected(h, h.upload(outsider, opened.run_id, 1, body), 403, "forbidden")
    await _rejected(
        h,
        h.client.get(
            routes.MODEL_BUNDLE.format(run_id=opened.run_id, version=0), headers=outsider.headers
        ),
        403,
        "forbidden",
    )


# --- where the update goes -----------------------------------------------------------


async def test_unknown_run(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    await _rejected(h, h.upload(opened.a, "run-00000000", 1, body), 404, "unknown_run")
    await _rejected(
        h,
        h.client.get(routes.RUN.format(run_id="run-00000000"), headers=h.admin),
        404,
        "unknown_run",
    )


async def test_round_not_open_and_unknown_round(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1), round=2)
    await _rejected(h, h.upload(opened.a, opened.run_id, 2, body), 409, "round_not_open")
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1), round=9)
    await _rejected(h, h.upload(opened.a, opened.run_id, 9, body), 404, "unknown_round")


async def test_round_closed_late_update(harness: Harness) -> None:
    a = await harness.add_site("site-a")
    b = await harness.add_site("site-b")
    run_id = await harness.create_run([a, b], rounds=2, min_sites=1, round_timeout_s=2.0)
    task_a, task_b = await harness.task(a), await harness.task(b)
    assert task_a is not None and task_b is not None
    base = await harness.model(run_id, 0)
    assert (await harness.upload(a, run_id, 1, harness.seal(a, task_a, base))).status_code == 200
    for _ in range(300):  # the ticker closes round 1 at its deadline with 1 of 2 (quorum 1)
        await asyncio.sleep(0.05)
        info = await harness.client.get(
            routes.ROUND.format(run_id=run_id, round=1), headers=harness.admin
        )
        if info.json()["status"] == "closed":
            break
    assert info.json()["status"] == "closed"
    late = harness.seal(b, task_b, harness.delta_like(base, 2))
    await _rejected(harness, harness.upload(b, run_id, 1, late), 409, "round_closed")


async def test_round_failed_without_quorum(harness: Harness) -> None:
    a = await harness.add_site("site-a")
    b = await harness.add_site("site-b")
    run_id = await harness.create_run([a, b], rounds=2, round_timeout_s=2.0)
    task_a = await harness.task(a)
    assert task_a is not None
    base = await harness.model(run_id, 0)
    assert (await harness.upload(a, run_id, 1, harness.seal(a, task_a, base))).status_code == 200
    for _ in range(300):
        await asyncio.sleep(0.05)
        run = await harness.client.get(routes.RUN.format(run_id=run_id), headers=harness.admin)
        if run.json()["status"] == "failed":
            break
    assert run.json()["status"] == "failed"
    rounds = (
        await harness.client.get(routes.ROUNDS.format(run_id=run_id), headers=harness.admin)
    ).json()
    assert [item["status"] for item in rounds] == ["failed"]


async def test_update_replayed_from_an_earlier_round(opened: OpenRound) -> None:
    h = opened.harness
    first = {}
    for site, task, seed in ((opened.a, opened.task_a, 1), (opened.b, opened.task_b, 2)):
        first[site.name] = h.seal(site, task, h.delta_like(opened.base, seed))
        assert (await h.upload(site, opened.run_id, 1, first[site.name])).status_code == 200
    assert (await h.task(opened.a)) is not None  # round 2 is open
    await _rejected(h, h.upload(opened.a, opened.run_id, 2, first["site-a"]), 409, "stale_round")


async def test_same_upload_twice_same_receipt_counted_once(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    first = await h.upload(opened.a, opened.run_id, 1, body)
    assert first.status_code == 200
    before = h.snapshot()
    again = await h.upload(opened.a, opened.run_id, 1, body)
    assert again.status_code == 200 and again.json() == first.json()
    assert h.snapshot() == before
    info = await h.client.get(routes.ROUND.format(run_id=opened.run_id, round=1), headers=h.admin)
    assert info.json()["status"] == "open"  # 1 of 2 updates: the replay did not count
    assert [s["state"] for s in info.json()["sites"]] == ["uploaded", "waiting"]


async def test_a_different_second_upload_conflicts(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    assert (await h.upload(opened.a, opened.run_id, 1, body)).status_code == 200
    other = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 2))
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, other), 409, "update_conflict")


# --- the body ------------------------------------------------------------------------


async def test_oversized_body(opened: OpenRound) -> None:
    h = opened.harness
    huge = b"\0" * (h.settings.max_update_bytes + 1)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, huge), 413, "payload_too_large")
    # without a Content-Length the server stops reading once over the limit: a body whose
    # front is a valid envelope (the header passes its checks), then too many bytes
    valid = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    padded = valid + b"\0" * (h.settings.max_update_bytes + 1 - len(valid))
    await _rejected(
        h, h.upload(opened.a, opened.run_id, 1, _chunks(padded, 65536)), 413, "payload_too_large"
    )
    # a front that is no envelope is refused before the rest is read
    await _rejected(
        h, h.upload(opened.a, opened.run_id, 1, _chunks(huge, 65536)), 400, "malformed_envelope"
    )


async def test_truncated_body(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    short = _chunks(body[: len(body) // 2])
    await _rejected(
        h,
        h.upload(opened.a, opened.run_id, 1, short, headers={"Content-Length": str(len(body))}),
        400,
        "truncated",
    )
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body[:40]), 400, "truncated")


async def test_tampered_ciphertext(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1))
    tampered = _flip(body, len(body) - 200)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, tampered), 400, "bad_signature")
    # re-signed by the site itself: the signature holds, the AEAD tag does not
    resigned = tampered[:-64] + crypto.sign(opened.a.key, crypto.sha256(tampered[:-64]))
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, resigned), 400, "decryption_failed")


async def test_sealed_to_another_key_or_garbage(opened: OpenRound) -> None:
    h = opened.harness
    other = crypto.generate_sealing_key().public_key()
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1), round_key=other)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 400, "decryption_failed")
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, b"x" * 500), 400, "malformed_envelope")


async def test_signed_by_another_key(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(
        opened.a, opened.task_a, h.delta_like(opened.base, 1), signer=crypto.generate_signing_key()
    )
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 400, "bad_signature")


# --- the tensors ---------------------------------------------------------------------


async def test_wrong_tensor_names(opened: OpenRound) -> None:
    h = opened.harness
    change = h.delta_like(opened.base, 1)
    name = sorted(change)[0]
    change["not.a.parameter"] = change.pop(name)
    body = h.seal(opened.a, opened.task_a, change)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "tensor_mismatch")


async def test_wrong_tensor_shapes_and_dtypes(opened: OpenRound) -> None:
    h = opened.harness
    change = h.delta_like(opened.base, 1)
    name = max(change, key=lambda key: change[key].numel())
    wrong_shape = {**change, name: change[name].reshape(-1)}
    body = h.seal(opened.a, opened.task_a, wrong_shape)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "tensor_mismatch")
    wrong_dtype = {**change, name: change[name].double()}
    body = h.seal(opened.a, opened.task_a, wrong_dtype)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "tensor_mismatch")


@pytest.mark.parametrize("value", [math.nan, math.inf])
async def test_non_finite(opened: OpenRound, value: float) -> None:
    h = opened.harness
    change = h.delta_like(opened.base, 1)
    name = sorted(change)[-1]
    poisoned = change[name].clone()
    poisoned.view(-1)[0] = value
    body = h.seal(opened.a, opened.task_a, {**change, name: poisoned})
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "non_finite")


@pytest.mark.parametrize("num_samples", [0, -5])
async def test_num_samples_must_be_positive(opened: OpenRound, num_samples: int) -> None:
    h = opened.harness
    body = h.seal(opened.a, opened.task_a, h.delta_like(opened.base, 1), num_samples=num_samples)
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "bad_num_samples")


async def test_base_model_mismatch(opened: OpenRound) -> None:
    h = opened.harness
    body = h.seal(
        opened.a, opened.task_a, h.delta_like(opened.base, 1), base_weights_sha256="0" * 64
    )
    await _rejected(h, h.upload(opened.a, opened.run_id, 1, body), 422, "base_model_mismatch")


# --- JSON bodies ---------------------------------------------------------------------


async def test_extra_json_fields(opened: OpenRound) -> None:
    h = opened.harness
    await _rejected(
        h,
        h.client.post(routes.SITES, json={"name": "site-x", "colour": "red"}, headers=h.admin),
        422,
        "extra_field",
    )
    run = {"name": "r", "config": {"sites": ["site-a"], "rounds": 1, "learning_rate": 1}}
    await _rejected(h, h.client.post(routes.RUNS, json=run, headers=h.admin), 422, "extra_field")
    await _rejected(
        h,
        h.client.post(
            routes.STATUS,
            json={"run_id": opened.run_id, "round": 1, "state": "training", "x": 1},
            headers=opened.a.headers,
        ),
        422,
        "extra_field",
    )


async def test_invalid_json_and_configs(opened: OpenRound) -> None:
    h = opened.harness
    await _rejected(
        h,
        h.client.post(routes.SITES, json={"name": "Bad Name"}, headers=h.admin),
        422,
        "invalid_input",
    )
    bad_model = {"name": "r", "config": {"sites": ["site-a"], "model": "resnet-9000"}}
    await _rejected(
        h, h.client.post(routes.RUNS, json=bad_model, headers=h.admin), 422, "invalid_input"
    )
    bad_params = {
        "name": "r",
        "config": {"sites": ["site-a"], "model_params": {"init_filters": -1}},
    }
    await _rejected(
        h, h.client.post(routes.RUNS, json=bad_params, headers=h.admin), 422, "invalid_input"
    )
    unknown = {"name": "r", "config": {"sites": ["site-a", "nowhere"]}}
    await _rejected(
        h, h.client.post(routes.RUNS, json=unknown, headers=h.admin), 404, "unknown_site"
    )
    await _rejected(
        h,
        h.client.post(
            routes.SITES,
            content=b"{not json",
            headers={**h.admin, "Content-Type": "application/json"},
        ),
        422,
        "invalid_input",
    )
    await _rejected(
        h,
        h.client.get(routes.TASKS_NEXT, params={"wait": 999}, headers=opened.a.headers),
        422,
        "invalid_input",
    )


async def test_site_exists_and_run_state(opened: OpenRound) -> None:
    h = opened.harness
    await _rejected(
        h, h.client.post(routes.SITES, json={"name": "site-a"}, headers=h.admin), 409, "site_exists"
    )
    await _rejected(
        h,
        h.client.post(routes.RUN_START.format(run_id=opened.run_id), headers=h.admin),
        409,
        "run_state",
    )


async def test_enrollment_token_is_single_use_and_expires(harness: Harness) -> None:
    import base64

    created = await harness.client.post(
        routes.SITES, json={"name": "site-q", "token_ttl_s": 0.2}, headers=harness.admin
    )
    token = created.json()["enrollment_token"]
    key = base64.b64encode(crypto.public_bytes(crypto.generate_signing_key().public_key())).decode()
    await asyncio.sleep(0.3)
    await _rejected(
        harness,
        harness.client.post(routes.ENROLL, json={"token": token, "signing_public_key": key}),
        401,
        "bad_token",
    )
    site = await harness.add_site("site-r")  # enrolled once
    await _rejected(
        harness,
        harness.client.post(
            routes.ENROLL, json={"token": "fse_" + "A" * 43, "signing_public_key": key}
        ),
        401,
        "bad_token",
    )
    assert site.credential.startswith("fss_")
    bad_key = {
        "token": "fse_" + "A" * 43,
        "signing_public_key": base64.b64encode(b"short").decode(),
    }
    await _rejected(harness, harness.client.post(routes.ENROLL, json=bad_key), 422, "invalid_input")


async def test_unknown_path_is_a_problem(harness: Harness) -> None:
    response = await harness.client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and problem_code(response) == "not_found"
