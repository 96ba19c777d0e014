"""A real server process killed with SIGKILL mid-round resumes with every update counted once.

Sites upload sealed updates made with real enrolled keys; the server is killed after
two uploads were acknowledged and while a third is half-sent, restarted on the same
data directory, and the remaining uploads (plus one replay) complete the round.
The consensus must equal the weighted mean of exactly the four updates.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared import crypto, routes
from shared.bundle import open_bundle
from shared.schemas import SignedTask, UpdateHeader
from shared.tasks import verify_task
from shared.tensors import Tensors
from shared.updates import seal_update

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from fedseg.cli import main; main()"]
TINY_MODEL = {"blocks_down": [1], "blocks_up": []}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``fedseg server serve`` as a child process on a loopback port."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.data_dir, self.port, self.log = data_dir, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FEDSEG_")}
        env["OMP_NUM_THREADS"] = "1"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *CLI,
                    "server",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + routes.READYZ, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    data_dir = tmp_path / "data"
    init = subprocess.run(
        [*CLI, "server", "init", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        check=True,
        env={key: value for key, value in os.environ.items() if not key.startswith("FEDSEG_")},
    )
    admin_token = json.loads(init.stdout)["admin_token"]
    running = Server(data_dir, _free_port(), tmp_path / "server.log")
    running.start()
    try:
        yield running, admin_token
    finally:
        running.stop()


def _half_send(url: str, path: str, credential: str, body: bytes) -> socket.socket:
    """Send the headers and half of the body, and leave the connection hanging."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {credential}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[: len(body) // 2])
    return connection


def test_sigkill_mid_round_loses_nothing_and_counts_nothing_twice(
    server: tuple[Server, str],
) -> None:
    running, admin_token = server
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=running.url, timeout=30) as client:
        _exercise(running, client, admin)


def _exercise(running: Server, client: httpx.Client, admin: dict[str, str]) -> None:
    names = ["site-a", "site-b", "site-c", "site-d"]
    keys, credentials = {}, {}
    for name in names:
        created = client.post(routes.SITES, json={"name": name}, headers=admin).json()
        keys[name] = crypto.generate_signing_key()
        enrolled = client.post(
            routes.ENROLL,
            json={
                "token": created["enrollment_token"],
                "signing_public_key": base64.b64encode(
                    crypto.public_bytes(keys[name].public_key())
                ).decode(),
            },
        ).json()
        credentials[name] = enrolled["credential"]
        server_key = crypto.ed25519_public_from_bytes(
            base64.b64decode(enrolled["server_signing_key"])
        )
    run = client.post(
        routes.RUNS,
        json={
            "name": "restart",
            "config": {"model_params": TINY_MODEL, "rounds": 2, "sites": names},
        },
        headers=admin,
    ).json()
    run_id = run["id"]
    assert client.post(routes.RUN_START.format(run_id=run_id), headers=admin).status_code == 200

    def site_headers(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials[name]}"}

    def model(version: int) -> Tensors:
        data = client.get(routes.MODEL_BUNDLE.format(run_id=run_id, version=version), headers=admin)
        assert data.status_code == 200, data.text
        return open_bundle(data.content, {crypto.key_id(server_key): server_key}).tensors

    base = model(0)
    weights = {"site-a": 5, "site-b": 11, "site-c": 17, "site-d": 23}
    deltas: dict[str, Tensors] = {}
    envelopes: dict[str, bytes] = {}
    for index, name in enumerate(names):
        signed = client.get(routes.TASKS_NEXT, headers=site_headers(name)).json()["task"]
        task = verify_task(SignedTask.model_validate(signed), server_key)
        deltas[name] = {
            key: (tensor * 0 + 0.01 * (index + 1)) + 0.001 * tensor for key, tensor in base.items()
        }
        header = UpdateHeader(
            run_id=run_id,
            round=1,
            site=name,
            base_weights_sha256=task.weights_sha256,
            num_samples=weights[name],
            created_at=datetime.now(UTC),
        )
        round_key = crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key))
        envelopes[name] = seal_update(
            header, deltas[name], round_key=round_key, site_key=keys[name]
        )
    path = routes.UPDATES.format(run_id=run_id, round=1)

    def upload(name: str) -> httpx.Response:
        return client.put(path, content=envelopes[name], headers=site_headers(name))

    receipts = {name: upload(name) for name in names[:2]}
    assert all(answer.status_code == 200 for answer in receipts.values())
    hanging = _half_send(running.url, path, credentials["site-c"], envelopes["site-c"])
    time.sleep(0.3)
    running.kill()
    hanging.close()

    running.start()
    assert not list((running.data_dir / "blobs" / "tmp").iterdir())  # the half upload is gone
    round_one = client.get(routes.ROUND.format(run_id=run_id, round=1), headers=admin).json()
    assert round_one["status"] == "open"
    assert [site["state"] for site in round_one["sites"]] == [
        "uploaded",
        "uploaded",
        "waiting",
        "waiting",
    ]
    replay = upload("site-a")  # a site that never saw its receipt sends the same bytes again
    assert replay.status_code == 200 and replay.json() == receipts["site-a"].json()
    for name in names[2:]:
        answer = upload(name)
        assert answer.status_code == 200, answer.text
    consensus = model(1)
    total = sum(weights.values())
    for key, tensor in base.items():
        expected = (
            tensor.double().numpy()
            + sum(weights[name] * deltas[name][key].double().numpy() for name in names) / total
        )
        np.testing.assert_allclose(consensus[key].numpy(), expected, rtol=0, atol=1e-6)
    run_info = client.get(routes.RUN.format(run_id=run_id), headers=admin).json()
    assert run_info["current_round"] == 2 and run_info["status"] == "running"
    metrics = client.get(routes.METRICS).text
    assert "fedseg_updates_accepted_total 2.0" in metrics  # two after the restart, not three
    key_files = sorted(p.name for p in (running.data_dir / "keys" / "rounds" / run_id).iterdir())
    assert key_files == ["2.x25519"]  # round 1's key is gone, round 2's is there
