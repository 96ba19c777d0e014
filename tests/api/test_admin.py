"""Normal paths of the admin, viewer and operations endpoints."""

from __future__ import annotations

import asyncio

import pytest

from shared import crypto, routes
from shared.schemas import AuditEvent, RoundInfo, RunInfo, SiteCreated, SiteInfo
from tests.api.conftest import TINY_MODEL, Harness

pytestmark = pytest.mark.anyio


async def test_sites_create_list_enroll_revoke(harness: Harness) -> None:
    created = await harness.client.post(
        routes.SITES, json={"name": "site-a"}, headers=harness.admin
    )
    assert created.status_code == 201
    answer = SiteCreated.model_validate(created.json())
    assert answer.site.status == "pending" and answer.enrollment_token.startswith("fse_")
    site = await harness.add_site("site-b")
    listed = [
        SiteInfo.model_validate(item)
        for item in (await harness.client.get(routes.SITES, headers=harness.admin)).json()
    ]
    assert [(item.name, item.status) for item in listed] == [
        ("site-a", "pending"),
        ("site-b", "active"),
    ]
    assert listed[1].fingerprint == crypto.fingerprint(site.key.public_key())
    revoked = await harness.client.post(
        routes.SITE_REVOKE.format(name="site-b"), headers=harness.admin
    )
    assert SiteInfo.model_validate(revoked.json()).status == "revoked"
    missing = await harness.client.post(
        routes.SITE_REVOKE.format(name="nope"), headers=harness.admin
    )
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_site"


async def test_enroll_returns_the_server_key(harness: Harness) -> None:
    import base64

    created = await harness.client.post(
        routes.SITES, json={"name": "site-a"}, headers=harness.admin
    )
    key = crypto.generate_signing_key()
    enrolled = await harness.client.post(
        routes.ENROLL,
        json={
            "token": created.json()["enrollment_token"],
            "signing_public_key": base64.b64encode(crypto.public_bytes(key.public_key())).decode(),
        },
    )
    body = enrolled.json()
    assert body["site"] == "site-a" and body["credential"].startswith("fss_")
    assert base64.b64decode(body["server_signing_key"]) == crypto.public_bytes(harness.server_key)
    assert body["server_key_id"] == crypto.key_id(harness.server_key)
    assert body["server_fingerprint"] == crypto.fingerprint(harness.server_key)


async def test_runs_create_list_get_stop(harness: Harness) -> None:
    a = await harness.add_site("site-a")
    run_id = await harness.create_run([a], start=False)
    assert run_id.startswith("run-")
    runs = [
        RunInfo.model_validate(item)
        for item in (await harness.client.get(routes.RUNS, headers=harness.admin)).json()
    ]
    assert [(run.id, run.status, run.current_round) for run in runs] == [(run_id, "created", None)]
    assert runs[0].config.model_params == TINY_MODEL
    started = RunInfo.model_validate(
        (
            await harness.client.post(routes.RUN_START.format(run_id=run_id), headers=harness.admin)
        ).json()
    )
    assert started.status == "running" and started.current_round == 1 and started.started_at
    round_one = RoundInfo.model_validate(
        (
            await harness.client.get(
                routes.ROUND.format(run_id=run_id, round=1), headers=harness.admin
            )
        ).json()
    )
    assert round_one.status == "open" and round_one.deadline and round_one.weights_sha256
    stopped = RunInfo.model_validate(
        (
            await harness.client.post(routes.RUN_STOP.format(run_id=run_id), headers=harness.admin)
        ).json()
    )
    assert stopped.status == "cancelled"
    rounds = (
        await harness.client.get(routes.ROUNDS.format(run_id=run_id), headers=harness.admin)
    ).json()
    assert [item["status"] for item in rounds] == ["cancelled"]
    assert (await harness.task(a)) is None
    assert not list(harness.settings.round_keys_dir.rglob("*.x25519"))
    again = await harness.client.post(routes.RUN_STOP.format(run_id=run_id), headers=harness.admin)
    assert again.status_code == 409 and again.json()["code"] == "run_state"


async def test_status_report_shows_in_round_progress(harness: Harness) -> None:
    a = await harness.add_site("site-a")
    b = await harness.add_site("site-b")
    run_id = await harness.create_run([a, b])
    report = {
        "run_id": run_id,
        "round": 1,
        "state": "training",
        "message": "step 3/20",
        "metrics": {"dice_mean": 0.4},
    }
    answer = await harness.client.post(routes.STATUS, json=report, headers=a.headers)
    assert answer.status_code == 204
    info = RoundInfo.model_validate(
        (
            await harness.client.get(
                routes.ROUND.format(run_id=run_id, round=1), headers=harness.admin
            )
        ).json()
    )
    by_site = {item.site: item for item in info.sites}
    assert by_site["site-a"].state == "training" and by_site["site-a"].message == "step 3/20"
    assert by_site["site-a"].metrics == {"dice_mean": 0.4}
    assert by_site["site-b"].state == "waiting"


async def test_audit_log_records_who_did_what(harness: Harness) -> None:
    a = await harness.add_site("site-a")
    run_id = await harness.create_run([a])
    await harness.model(run_id, 0)
    events = [
        AuditEvent.model_validate(item)
        for item in (await harness.client.get(routes.AUDIT, headers=harness.admin)).json()
    ]
    actions = [event.action for event in events]
    for action in (
        "token.created",
        "site.created",
        "site.enrolled",
        "run.created",
        "run.started",
        "round.opened",
        "model.downloaded",
    ):
        assert action in actions
    page = (
        await harness.client.get(
            routes.AUDIT, params={"after": events[1].id, "limit": 2}, headers=harness.admin
        )
    ).json()
    assert [item["id"] for item in page] == [events[2].id, events[3].id]
    assert all(item["id"] > 0 for item in page)
    newest = (
        await harness.client.get(
            routes.AUDIT, params={"limit": 3, "newest": "true"}, headers=harness.admin
        )
    ).json()
    assert [item["id"] for item in newest] == [event.id for event in events[::-1][:3]]


async def test_operations_endpoints(harness: Harness) -> None:
    assert (await harness.client.get(routes.HEALTHZ)).json() == {"status": "ok"}
    assert (await harness.client.get(routes.READYZ)).json() == {"status": "ready"}
    a = await harness.add_site("site-a")
    run_id = await harness.create_run([a], rounds=1)
    task = await harness.task(a)
    assert task is not None
    base = await harness.model(run_id, 0)
    bad = harness.seal(a, task, harness.delta_like(base, 1), num_samples=0)
    assert (await harness.upload(a, run_id, 1, bad)).status_code == 422
    assert (await harness.upload(a, run_id, 1, harness.seal(a, task, base))).status_code == 200
    metrics = (await harness.client.get(routes.METRICS)).text
    assert "fedseg_rounds_closed_total 1.0" in metrics
    assert "fedseg_updates_accepted_total 1.0" in metrics
    assert 'fedseg_updates_rejected_total{code="bad_num_samples"} 1.0' in metrics
    assert "fedseg_aggregation_seconds_count 1.0" in metrics
    assert "fedseg_bytes_received_total" in metrics and "fedseg_bytes_sent_total" in metrics


async def test_readyz_reports_a_broken_blob_store(harness: Harness) -> None:
    import shutil

    shutil.rmtree(harness.settings.blob_dir)
    harness.settings.blob_dir.write_bytes(b"")  # a file where the directory was
    answer = await harness.client.get(routes.READYZ)
    assert answer.status_code == 503 and answer.json()["code"] == "unavailable"


async def test_openapi_has_tags_summaries_and_examples(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert all(op.get("summary") and op.get("tags") for op in operations)
    assert routes.UPDATES in spec["paths"] and routes.MODEL_BUNDLE in spec["paths"]
    create_site = spec["paths"][routes.SITES]["post"]
    assert create_site["requestBody"]["content"]["application/json"]["examples"]


@pytest.mark.slow
async def test_models_build_in_a_child_process(tmp_path) -> None:
    """The production default keeps torch out of the server: the model builds in a child."""
    import httpx

    from server.app import create_app
    from server.bootstrap import init_data_dir
    from tests.api.conftest import make_settings

    database_url = (
        f"sqlite+aiosqlite:///{tmp_path / 'child.db'}"  # the database is beside the point
    )
    settings = make_settings(tmp_path / "child", database_url, build_models_in_subprocess=True)
    token = (await asyncio.to_thread(init_data_dir, settings)).admin_token
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            harness = Harness(app, client, settings, token)
            site = await harness.add_site("site-a")
            bad = {
                "name": "r",
                "config": {"sites": ["site-a"], "model_params": {"init_filters": 0}},
            }
            answer = await client.post(routes.RUNS, json=bad, headers=harness.admin)
            assert answer.status_code == 422 and answer.json()["code"] == "invalid_input"
            run_id = await harness.create_run([site], rounds=1)
            assert len(await harness.model(run_id, 0)) == 11  # the tiny model's tensors
