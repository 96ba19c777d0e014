"""Run by test_torch_free.py in a fresh interpreter: the server, one whole round, no torch.

Imports the app, creates it, runs its lifespan, enrolls two sites, starts a run
(the initial weights are built in the model worker's child process, as in
production), uploads two sealed updates made with numpy, and waits for the
consensus. Prints one JSON object: the torch and MONAI modules loaded after the
imports and after the round, and the model versions the run ended with.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

import fedseg.cli  # noqa: F401  `fedseg server serve` runs the server from the command line
from server.app import create_app
from server.bootstrap import init_data_dir
from server.settings import Settings
from shared import crypto, routes
from shared.arrays import to_safetensors
from shared.bundle import open_bundle
from shared.schemas import SignedTask, UpdateHeader
from shared.tasks import verify_task
from shared.updates import seal_update_payload

HEAVY = ("torch", "monai", "opacus")
TINY_MODEL = {"blocks_down": [1], "blocks_up": []}


def heavy_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)


async def one_round(settings: Settings, admin_token: str) -> list[int]:
    admin = {"Authorization": f"Bearer {admin_token}"}
    server_key = crypto.load_signing_key(settings.signing_key_path).public_key()
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        sites = {}
        for name in ("site-a", "site-b"):
            created = await client.post(routes.SITES, json={"name": name}, headers=admin)
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
            sites[name] = (key, {"Authorization": f"Bearer {enrolled.json()['credential']}"})
        config = {"model": "segresnet-small", "model_params": TINY_MODEL, "rounds": 1}
        created = await client.post(
            routes.RUNS,
            json={"name": "torch-free", "config": {**config, "sites": list(sites)}},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        started = await client.post(routes.RUN_START.format(run_id=run_id), headers=admin)
        assert started.status_code == 200, started.text
        bundle = await client.get(
            routes.MODEL_BUNDLE.format(run_id=run_id, version=0), headers=admin
        )
        base = open_bundle(bundle.content, {crypto.key_id(server_key): server_key}).arrays
        for index, (name, (key, headers)) in enumerate(sites.items()):
            signed = (await client.get(routes.TASKS_NEXT, headers=headers)).json()["task"]
            task = verify_task(SignedTask.model_validate(signed), server_key)
            rng = np.random.default_rng(index)
            change = {
                tensor: rng.standard_normal(array.shape).astype(array.dtype) * 0.01
                for tensor, array in base.items()
            }
            header = UpdateHeader(
                run_id=run_id,
                round=1,
                site=name,
                base_weights_sha256=task.weights_sha256,
                num_samples=5 + index,
                created_at=datetime.now(UTC),
            )
            body = seal_update_payload(
                header,
                to_safetensors(change),
                round_key=crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key)),
                site_key=key,
            )
            answer = await client.put(
                routes.UPDATES.format(run_id=run_id, round=1),
                content=body,
                headers={**headers, "Content-Type": routes.UPDATE_CONTENT_TYPE},
            )
            assert answer.status_code == 200, answer.text
        models = await client.get(routes.MODELS.format(run_id=run_id), headers=admin)
        return [model["version"] for model in models.json()]


def main() -> None:
    after_imports = heavy_modules()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url="",
            tick_s=0.05,
            max_wait_s=1.0,
            build_models_in_subprocess=True,
        )
        admin_token = init_data_dir(settings).admin_token
        versions = asyncio.run(one_round(settings, admin_token))
    print(
        json.dumps(
            {
                "after_imports": after_imports,
                "after_round": heavy_modules(),
                "versions": versions,
            }
        )
    )


if __name__ == "__main__":
    main()
