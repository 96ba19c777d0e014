"""``fedseg server rotate-key``: the old key signs the new one; the server serves and checks it."""

from __future__ import annotations

import base64
import json
import stat
from typing import Any

import httpx
import pytest
from anyio import to_thread
from typer.testing import CliRunner

from fedseg.cli import app as cli
from server.app import create_app
from server.bootstrap import rotate_key
from shared import crypto, routes
from shared.bundle import open_bundle
from shared.errors import ConfigError
from shared.rotation import follow_rotations
from shared.schemas import SignedKeyRotation, SignedTask
from shared.tasks import verify_task
from tests.api.conftest import TINY_MODEL, Initialised

pytestmark = pytest.mark.anyio


async def _serve(initialised: Initialised, work: Any) -> Any:
    application = create_app(initialised.settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://fedseg.test") as client:
            return await work(client)


def _admin(initialised: Initialised) -> dict[str, str]:
    return {"Authorization": f"Bearer {initialised.admin_token}"}


async def test_rotation_is_served_and_followed_from_the_pinned_key(
    initialised: Initialised,
) -> None:
    settings = initialised.settings
    old = crypto.load_signing_key(settings.signing_key_path).public_key()

    async def before(client: httpx.AsyncClient) -> dict[str, Any]:
        created = await client.post(
            routes.SITES, json={"name": "site-a"}, headers=_admin(initialised)
        )
        key = crypto.generate_signing_key()
        enrolled = await client.post(
            routes.ENROLL,
            json={
                "token": created.json()["enrollment_token"],
                "signing_public_key": base64.b64encode(
                    crypto.public_bytes(key.public_key())
                ).decode(),
            },
        )
        assert (await client.get(routes.KEY_ROTATIONS)).json() == []
        body = {
            "name": "r",
            "config": {"sites": ["site-a"], "model_params": TINY_MODEL, "rounds": 2},
        }
        run = await client.post(routes.RUNS, json=body, headers=_admin(initialised))
        run_id = run.json()["id"]
        await client.post(routes.RUN_START.format(run_id=run_id), headers=_admin(initialised))
        return {"credential": enrolled.json()["credential"], "run_id": run_id}

    site = await _serve(initialised, before)
    result = await to_thread.run_sync(rotate_key, settings)  # it runs its own event loop
    assert result.old_key_id == crypto.key_id(old)
    assert not settings.signing_key_path.stat().st_mode & 0o077
    assert stat.S_IMODE(settings.signing_key_path.stat().st_mode) == 0o600
    new = crypto.load_signing_key(settings.signing_key_path).public_key()
    assert result.new_key_id == crypto.key_id(new) != crypto.key_id(old)

    async def after(client: httpx.AsyncClient) -> None:
        served = [
            SignedKeyRotation.model_validate(item)
            for item in (await client.get(routes.KEY_ROTATIONS)).json()
        ]
        steps = follow_rotations(old, served)
        assert [crypto.key_id(key) for key, _ in steps] == [crypto.key_id(new)]
        headers = {"Authorization": f"Bearer {site['credential']}"}
        poll = await client.get(routes.TASKS_NEXT, params={"wait": 0}, headers=headers)
        signed = SignedTask.model_validate(poll.json()["task"])
        assert signed.key_id == crypto.key_id(new)  # the restarted server signs with the new key
        verify_task(signed, steps[-1][0])
        bundle = await client.get(
            routes.MODEL_BUNDLE.format(run_id=site["run_id"], version=0), headers=headers
        )
        opened = open_bundle(bundle.content, {crypto.key_id(old): old})
        assert opened.manifest.key_id == crypto.key_id(old)  # signed before the rotation
        events = (await client.get(routes.AUDIT, headers=_admin(initialised))).json()
        assert "server.key_rotated" in {event["action"] for event in events}

    await _serve(initialised, after)


async def test_the_server_refuses_rotations_that_do_not_chain_to_its_key(
    initialised: Initialised,
) -> None:
    settings = initialised.settings
    await to_thread.run_sync(rotate_key, settings)
    data = json.loads(settings.rotations_path.read_text())
    data[0]["rotation"]["rotated_at"] = "2000-01-01T00:00:00Z"  # the signature no longer holds
    settings.rotations_path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="does not verify"):
        create_app(settings)
    rotate_again = json.loads(settings.rotations_path.read_text())
    assert rotate_again == data  # nothing was changed by the refusal


def test_rotate_key_command(initialised: Initialised) -> None:
    data_dir = str(initialised.settings.data_dir)
    first = CliRunner().invoke(cli, ["server", "rotate-key", "--data-dir", data_dir, "--json"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli, ["server", "rotate-key", "--data-dir", data_dir])
    assert second.exit_code == 0 and "restart the server" in second.output
    assert json.loads(first.stdout)["rotations"] == 1
    chain = json.loads(initialised.settings.rotations_path.read_text())
    assert len(chain) == 2
    assert chain[1]["rotation"]["old_key_id"] == chain[0]["rotation"]["new_key_id"]
