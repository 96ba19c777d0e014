"""Enrollment refuses weak signing keys: small-order and non-canonical Ed25519 points."""

from __future__ import annotations

import base64

import pytest

from shared import crypto, routes
from tests.api.conftest import Harness, problem_code
from tests.unit.test_weak_keys import NON_CANONICAL, SMALL_ORDER

pytestmark = pytest.mark.anyio


async def test_every_small_order_and_non_canonical_key_is_refused(harness: Harness) -> None:
    created = await harness.client.post(
        routes.SITES, json={"name": "site-a"}, headers=harness.admin
    )
    token = created.json()["enrollment_token"]
    for raw in SMALL_ORDER + NON_CANONICAL:
        answer = await harness.client.post(
            routes.ENROLL,
            json={"token": token, "signing_public_key": base64.b64encode(raw).decode()},
        )
        assert answer.status_code == 422, (raw.hex(), answer.text)
        assert problem_code(answer) == "invalid_input"
        assert "signing_public_key" in answer.json()["detail"]
    sites = (await harness.client.get(routes.SITES, headers=harness.admin)).json()
    assert [(site["name"], site["status"]) for site in sites] == [("site-a", "pending")]
    # the token was not used up by the refusals: a real key still enrolls
    good = crypto.public_bytes(crypto.generate_signing_key().public_key())
    answer = await harness.client.post(
        routes.ENROLL,
        json={"token": token, "signing_public_key": base64.b64encode(good).decode()},
    )
    assert answer.status_code == 200, answer.text
