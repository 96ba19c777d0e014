"""Revocable, expiring admin and viewer tokens, and the hash-chained audit log."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from server.app import create_app
from server.db.engine import MIGRATIONS_DIR, Database, make_engine, sync_url
from server.services.audit import AuditService
from shared import crypto, routes
from shared.schemas import AuditEvent, AuditVerification, TokenCreated, TokenInfo
from tests.api.conftest import Harness, Initialised, problem_code

pytestmark = pytest.mark.anyio


@pytest.fixture
def sql(harness: Harness) -> Iterator[Any]:
    """Run SQL straight at the database, as someone with access to it might."""
    engine = create_engine(sync_url(harness.settings.database_url))

    def run(statement: str, **params: Any) -> list[Any]:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    yield run
    engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(h: Harness, **body: Any) -> TokenCreated:
    answer = await h.client.post(routes.TOKENS, json=body, headers=h.admin)
    assert answer.status_code == 201, answer.text
    return TokenCreated.model_validate(answer.json())


async def events(h: Harness) -> list[AuditEvent]:
    answer = await h.client.get(routes.AUDIT, params={"limit": 1000}, headers=h.admin)
    assert answer.status_code == 200, answer.text
    return [AuditEvent.model_validate(item) for item in answer.json()]


async def verify(h: Harness) -> AuditVerification:
    answer = await h.client.get(routes.AUDIT_VERIFY, headers=h.admin)
    assert answer.status_code == 200, answer.text
    return AuditVerification.model_validate(answer.json())


# --- tokens ------------------------------------------------------------------------------


async def test_tokens_are_minted_listed_and_revoked(harness: Harness) -> None:
    created = await mint(harness, role="viewer", label="dashboard")
    assert created.secret.startswith("fsa_") and created.token.status == "active"
    assert created.token.expires_at is not None
    days = (created.token.expires_at - created.token.created_at) / timedelta(days=1)
    assert round(days) == 90  # expiry is on by default
    viewer = bearer(created.secret)
    assert (await harness.client.get(routes.SITES, headers=viewer)).status_code == 200
    forbidden = await harness.client.post(routes.TOKENS, json={"label": "x"}, headers=viewer)
    assert forbidden.status_code == 403
    listed = await harness.client.get(routes.TOKENS, headers=harness.admin)
    assert created.secret not in listed.text
    infos = {item["label"]: TokenInfo.model_validate(item) for item in listed.json()}
    assert infos["dashboard"].role == "viewer" and infos["initial-admin"].role == "admin"
    revoked = await harness.client.post(
        routes.TOKEN_REVOKE.format(token_id=created.token.id), headers=harness.admin
    )
    assert TokenInfo.model_validate(revoked.json()).status == "revoked"
    refused = await harness.client.get(routes.SITES, headers=viewer)
    assert refused.status_code == 401 and problem_code(refused) == "token_revoked"
    actions = [(e.action, e.target) for e in await events(harness)]
    assert ("token.created", f"token:{created.token.id}") in actions
    assert ("token.revoked", f"token:{created.token.id}") in actions


async def test_an_expired_token_is_refused_with_its_own_code(harness: Harness, sql: Any) -> None:
    created = await mint(harness, role="admin", label="short", expires_in_days=1)
    headers = bearer(created.secret)
    assert (await harness.client.get(routes.RUNS, headers=headers)).status_code == 200
    past = (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None)
    sql("UPDATE admin_tokens SET expires_at = :at WHERE id = :id", at=past, id=created.token.id)
    refused = await harness.client.get(routes.RUNS, headers=headers)
    assert refused.status_code == 401 and problem_code(refused) == "token_expired"
    listed = await harness.client.get(routes.TOKENS, headers=harness.admin)
    status = {item["id"]: item["status"] for item in listed.json()}
    assert status[created.token.id] == "expired"


@pytest.mark.parametrize(
    "body",
    [
        {"label": "x", "expires_in_days": 0},
        {"label": "x", "expires_in_days": 100_000},
        {"label": "x", "role": "site"},
        {"label": "Bad Label\x00"},
    ],
)
async def test_bad_token_requests_are_refused(harness: Harness, body: dict[str, Any]) -> None:
    answer = await harness.client.post(routes.TOKENS, json=body, headers=harness.admin)
    assert answer.status_code == 422 and problem_code(answer) == "invalid_input"


async def test_the_last_usable_admin_token_cannot_be_revoked(harness: Harness) -> None:
    listed = (await harness.client.get(routes.TOKENS, headers=harness.admin)).json()
    (initial,) = [item["id"] for item in listed if item["label"] == "initial-admin"]
    refused = await harness.client.post(
        routes.TOKEN_REVOKE.format(token_id=initial), headers=harness.admin
    )
    assert refused.status_code == 409
    other = await mint(harness, role="admin", label="second")
    revoked = await harness.client.post(
        routes.TOKEN_REVOKE.format(token_id=initial), headers=bearer(other.secret)
    )
    assert revoked.status_code == 200, revoked.text
    missing = await harness.client.post(
        routes.TOKEN_REVOKE.format(token_id=999_999), headers=bearer(other.secret)
    )
    assert missing.status_code == 404


# --- the hash chain ----------------------------------------------------------------------


async def _some_history(h: Harness) -> None:
    await mint(h, role="viewer", label="v1")
    await h.add_site("site-a")
    await h.add_site("site-b")
    assert (await verify(h)).ok  # everything sealed (on PostgreSQL sealing runs in the background)


async def test_an_intact_chain_verifies(harness: Harness) -> None:
    await _some_history(harness)
    result = await verify(harness)
    assert result.ok and result.broken_seq is None and result.unsealed == 0
    assert result.checked == result.head_seq == len(await events(harness))


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE audit_events SET target = 'site:nobody' WHERE id = :id",
        "UPDATE audit_events SET actor = 'admin:someone-else' WHERE id = :id",
        "UPDATE audit_events SET detail = '{}' WHERE id = :id",
    ],
    ids=["target", "actor", "detail"],
)
async def test_an_edited_row_is_caught_at_its_link(harness: Harness, sql: Any, edit: str) -> None:
    await _some_history(harness)
    history = await events(harness)
    victim = history[len(history) // 2]
    sql(edit, id=victim.id)
    result = await verify(harness)
    assert not result.ok
    assert result.broken_id == victim.id
    assert result.reason is not None and "hash" in result.reason


async def test_a_deleted_row_is_caught(harness: Harness, sql: Any) -> None:
    await _some_history(harness)
    history = await events(harness)
    sql("DELETE FROM audit_events WHERE id = :id", id=history[1].id)
    result = await verify(harness)
    assert not result.ok and result.reason is not None and "missing" in result.reason


async def test_a_deleted_tail_is_caught_by_the_head_row(harness: Harness, sql: Any) -> None:
    await _some_history(harness)
    history = await events(harness)
    sql("DELETE FROM audit_events WHERE id = :id", id=history[-1].id)
    result = await verify(harness)
    assert not result.ok and "head" in (result.reason or "")


async def test_a_resealed_row_is_caught(harness: Harness, sql: Any) -> None:
    """Blanking a row's hash to have it sealed again moves it: its old place is missing."""
    await _some_history(harness)
    victim = (await events(harness))[0]
    sql(
        "UPDATE audit_events SET target = 'x', seq = NULL, hash = NULL, prev_hash = NULL "
        "WHERE id = :id",
        id=victim.id,
    )
    result = await verify(harness)
    assert not result.ok and result.broken_seq == 1


async def test_concurrent_appends_keep_one_chain(harness: Harness) -> None:
    async def create(index: int) -> None:
        answer = await harness.client.post(
            routes.SITES, json={"name": f"site-{index:02d}"}, headers=harness.admin
        )
        assert answer.status_code == 201, answer.text

    await asyncio.gather(*(create(index) for index in range(24)))
    result = await verify(harness)
    assert result.ok, result
    history = await events(harness)
    assert result.checked == len(history) >= 24


# --- what gets recorded ------------------------------------------------------------------


async def test_authentication_failures_are_one_event_per_source_and_window(
    harness: Harness,
) -> None:
    for _ in range(15):  # under the throttle's limit (20 failures a minute), so each is a 401
        answer = await harness.client.get(routes.SITES, headers=bearer("fsa_wrong"))
        assert answer.status_code == 401
    assert (await harness.client.get(routes.SITES)).status_code == 401
    viewer = await mint(harness, role="viewer", label="v")
    forbidden = await harness.client.post(
        routes.SITES, json={"name": "site-x"}, headers=bearer(viewer.secret)
    )
    assert forbidden.status_code == 403
    await harness.app.state.services.audit.flush(everything=True)
    history = await events(harness)
    failed = [e for e in history if e.action == "auth.failed"]
    by_code = {e.detail["code"]: e.detail["count"] for e in failed}
    assert by_code == {"bad_token": 15, "unauthenticated": 1}
    assert all(e.actor.startswith("address:") for e in failed)
    (denied,) = [e for e in history if e.action == "access.forbidden"]
    assert denied.detail["count"] == 1 and denied.detail["paths"] == [routes.SITES]
    assert (await verify(harness)).ok


async def test_a_failed_enrollment_is_audited(harness: Harness) -> None:
    created = await harness.client.post(
        routes.SITES, json={"name": "site-a"}, headers=harness.admin
    )
    weak = bytes([1] + [0] * 31)  # the identity point
    answer = await harness.client.post(
        routes.ENROLL,
        json={
            "token": created.json()["enrollment_token"],
            "signing_public_key": base64.b64encode(weak).decode(),
        },
    )
    assert answer.status_code == 422
    (failed,) = [e for e in await events(harness) if e.action == "site.enroll_failed"]
    assert failed.target == "site:site-a" and failed.detail["code"] == "invalid_input"
    good = crypto.public_bytes(crypto.generate_signing_key().public_key())
    again = await harness.client.post(
        routes.ENROLL,
        json={
            "token": created.json()["enrollment_token"],
            "signing_public_key": base64.b64encode(good).decode(),
        },
    )
    assert again.status_code == 200


async def test_an_oversized_upload_is_recorded(harness: Harness) -> None:
    site = await harness.add_site("site-a")
    other = await harness.add_site("site-b")
    run_id = await harness.create_run([site, other], rounds=1)
    too_big = b"\0" * (harness.settings.max_update_bytes + 1)
    answer = await harness.upload(site, run_id, 1, too_big)
    assert answer.status_code == 413
    await harness.app.state.services.audit.flush(everything=True)
    (event,) = [e for e in await events(harness) if e.action == "request.too_large"]
    assert event.detail["count"] == 1 and event.detail["code"] == "payload_too_large"


async def test_a_database_from_before_the_chain_is_chained_at_start(
    initialised: Initialised,
) -> None:
    """Upgrading: events written before migration 0002 are sealed when the server starts."""
    settings = initialised.settings
    engine = create_engine(sync_url(settings.database_url))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sync_url(settings.database_url).replace("%", "%%"))
    with engine.begin() as connection:  # back to the initial schema, as an old server left it
        connection.execute(text("DELETE FROM audit_events"))
        connection.execute(text("DELETE FROM audit_chain"))
    command.downgrade(config, "0001")
    with engine.begin() as connection:
        for index in range(3):
            connection.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, target, detail) "
                    "VALUES (:at, 'cli', 'legacy.event', :target, '{}')"
                ),
                {"at": datetime(2026, 1, 1, 0, 0, index), "target": f"t:{index}"},
            )
    engine.dispose()
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            headers = bearer(initialised.admin_token)
            result = AuditVerification.model_validate(
                (await client.get(routes.AUDIT_VERIFY, headers=headers)).json()
            )
            assert result.ok and result.checked == 3 and result.unsealed == 0
            tokens = (await client.get(routes.TOKENS, headers=headers)).json()
            assert all(token["expires_at"] is not None for token in tokens)


async def test_refusals_are_written_once_their_window_ends(harness: Harness) -> None:
    db = Database(make_engine(harness.settings.database_url))
    audit = AuditService(db, window=timedelta(milliseconds=300))
    try:
        for _ in range(3):
            audit.note_refusal(source="10.0.0.1", status=401, code="bad_token", path="/a")
        audit.note_refusal(source="10.0.0.2", status=401, code="bad_token", path="/b")
        audit.note_refusal(source="10.0.0.1", status=404, code="not_found", path="/c")  # not kept
        assert await audit.flush() == 0 and audit.pending == 4  # the window is still open
        await asyncio.sleep(0.35)
        assert await audit.flush() == 2 and audit.pending == 0
    finally:
        await db.close()
    counts = {
        e.actor: e.detail["count"] for e in await events(harness) if e.action == "auth.failed"
    }
    assert counts == {"address:10.0.0.1": 3, "address:10.0.0.2": 1}
    assert (await verify(harness)).ok
