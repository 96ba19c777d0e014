"""Enrollment without traps: the public server key, re-issued tokens, audited refusals."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from shared import crypto, routes
from shared.schemas import AuditEvent, ServerKey, SiteCreated
from tests.api.conftest import Harness

pytestmark = pytest.mark.anyio


def _enroll_body(token: str) -> dict[str, str]:
    key = crypto.generate_signing_key()
    return {
        "token": token,
        "signing_public_key": base64.b64encode(crypto.public_bytes(key.public_key())).decode(),
    }


async def _audit(harness: Harness) -> list[AuditEvent]:
    answer = await harness.client.get(routes.AUDIT, headers=harness.admin)
    return [AuditEvent.model_validate(item) for item in answer.json()]


async def test_server_key_is_public_and_complete(harness: Harness) -> None:
    answer = await harness.client.get(routes.SERVER_KEY)  # no token
    assert answer.status_code == 200
    key = ServerKey.model_validate(answer.json())
    loaded = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert crypto.public_bytes(loaded) == crypto.public_bytes(harness.server_key)  # type: ignore[arg-type]
    assert base64.b64decode(key.public_key) == crypto.public_bytes(harness.server_key)
    assert key.key_id == crypto.key_id(harness.server_key)
    assert key.fingerprint == crypto.fingerprint(harness.server_key)
    assert "PRIVATE" not in answer.text


async def test_reissue_token_replaces_the_old_token_and_the_enrolled_key(
    harness: Harness,
) -> None:
    site = await harness.add_site("site-a")
    assert (await harness.client.get(routes.TASKS_NEXT, headers=site.headers)).status_code == 200
    spare = await harness.client.post(routes.SITES, json={"name": "site-b"}, headers=harness.admin)
    old_token = spare.json()["enrollment_token"]

    reissued = await harness.client.post(
        routes.SITE_REISSUE.format(name="site-a"), headers=harness.admin
    )
    assert reissued.status_code == 201, reissued.text
    fresh = SiteCreated.model_validate(reissued.json())
    assert fresh.site.status == "pending" and fresh.site.fingerprint is None
    # the enrolled key's credential stops working at once
    refused = await harness.client.get(routes.TASKS_NEXT, headers=site.headers)
    assert refused.status_code == 401 and refused.json()["code"] == "bad_token"

    # site-b: a re-issued token makes the first, unspent one useless
    again = await harness.client.post(
        routes.SITE_REISSUE.format(name="site-b"),
        json={"token_ttl_s": 60},
        headers=harness.admin,
    )
    assert again.status_code == 201
    stale = await harness.client.post(routes.ENROLL, json=_enroll_body(old_token))
    assert stale.status_code == 401 and "reissue-token" in stale.json()["detail"]

    # the new token enrolls site-a with a new key, and works exactly once
    enrolled = await harness.client.post(routes.ENROLL, json=_enroll_body(fresh.enrollment_token))
    assert enrolled.status_code == 200, enrolled.text
    credential = enrolled.json()["credential"]
    polled = await harness.client.get(
        routes.TASKS_NEXT, headers={"Authorization": f"Bearer {credential}"}
    )
    assert polled.status_code == 200
    twice = await harness.client.post(routes.ENROLL, json=_enroll_body(fresh.enrollment_token))
    assert twice.status_code == 401

    actions = [event.action for event in await _audit(harness)]
    assert actions.count("site.token_reissued") == 2
    assert actions.count("site.enroll_refused") == 2


async def test_a_revoked_site_comes_back_only_through_a_reissued_token(harness: Harness) -> None:
    created = await harness.client.post(
        routes.SITES, json={"name": "site-r"}, headers=harness.admin
    )
    token = created.json()["enrollment_token"]
    revoked = await harness.client.post(
        routes.SITE_REVOKE.format(name="site-r"), headers=harness.admin
    )
    assert revoked.json()["status"] == "revoked"
    refused = await harness.client.post(routes.ENROLL, json=_enroll_body(token))
    assert refused.status_code == 401 and refused.json()["code"] == "bad_token"

    reissued = await harness.client.post(
        routes.SITE_REISSUE.format(name="site-r"), headers=harness.admin
    )
    new_token = reissued.json()["enrollment_token"]
    enrolled = await harness.client.post(routes.ENROLL, json=_enroll_body(new_token))
    assert enrolled.status_code == 200 and enrolled.json()["site"] == "site-r"


async def test_bad_tokens_are_audited_without_the_token(harness: Harness) -> None:
    bogus = "fse_" + "x" * 40
    refused = await harness.client.post(routes.ENROLL, json=_enroll_body(bogus))
    assert refused.status_code == 401 and refused.json()["code"] == "bad_token"
    events = [e for e in await _audit(harness) if e.action == "site.enroll_refused"]
    assert len(events) == 1
    assert bogus not in events[0].model_dump_json()
    assert events[0].detail["reason"].startswith("enrollment token is unknown")


async def test_reissue_needs_an_admin_and_a_known_site(harness: Harness) -> None:
    missing = await harness.client.post(
        routes.SITE_REISSUE.format(name="nope"), headers=harness.admin
    )
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_site"
    site = await harness.add_site("site-c")
    forbidden = await harness.client.post(
        routes.SITE_REISSUE.format(name="site-c"), headers=site.headers
    )
    assert forbidden.status_code == 403
