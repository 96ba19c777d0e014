"""One round of N sites against a real server over loopback: overhead, peak RSS, lower bound.

Usage: .venv/bin/python bench/server_round.py [--sites 8] [--model segresnet]

Starts ``fedseg server serve`` on a free loopback port, enrolls N sites with real
keys, starts a one-round run of the full SegResNet (18.8 MB of float32 weights),
has every site upload a sealed delta at once, and prints:

- the round overhead: first upload byte to the next bundle ready (the last upload
  is answered only after the round has closed and the bundle is stored);
- the server's peak RSS during the round (VmHWM after resetting it) and over its
  whole life;
- this machine's lower bound for the same work, measured here in the same run:
  loopback transfer of the N envelopes, then, for each, verify and unseal and
  accumulate; then serialise, hash and sign the consensus once;
- the ratio overhead / bound, and the targets (<= 1.5x; RSS <= 300 MB + 3x model),
  each with a PASS or MISS line.

The bound runs the server's own numpy code (`shared.arrays`, the accumulator) in
this process; torch only makes the sites' random deltas.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch

from server.services.aggregation import Accumulator
from shared import arrays, crypto, routes
from shared.bundle import make_bundle, open_bundle, read_bundle_files
from shared.schemas import SignedTask, UpdateHeader
from shared.tasks import verify_task
from shared.tensors import Tensors, from_safetensors
from shared.updates import UPDATE_CONTEXT, seal_update

CLI = [sys.executable, "-c", "from fedseg.cli import main; main()"]
TARGET_RATIO = 1.5
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loopback_transfer(payloads: list[bytes]) -> float:
    """Seconds to push every payload through loopback TCP at once, into a discarding sink."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = [0] * len(payloads)

    def sink(index: int, connection: socket.socket) -> None:
        with connection:
            while chunk := connection.recv(1 << 20):
                received[index] += len(chunk)

    def accept() -> None:
        for index in range(len(payloads)):
            connection, _ = listener.accept()
            threading.Thread(target=sink, args=(index, connection)).start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    started = time.perf_counter()
    senders = []
    for payload in payloads:

        def send(data: bytes = payload) -> None:
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(data)

        senders.append(threading.Thread(target=send))
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    acceptor.join()
    while sum(received) < sum(len(p) for p in payloads):
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    listener.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--model", default="segresnet")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="fedseg-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSEG_")}
    init = subprocess.run(
        [*CLI, "server", "init", "--data-dir", str(work / "data"), "--json"],
        capture_output=True,
        check=True,
        env=env,
    )
    admin = {"Authorization": f"Bearer {json.loads(init.stdout)['admin_token']}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [
            *CLI,
            "server",
            "serve",
            "--data-dir",
            str(work / "data"),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        client = httpx.Client(base_url=url, timeout=120)
        for _ in range(300):
            try:
                if client.get(routes.READYZ).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        names = [f"site-{i:02d}" for i in range(args.sites)]
        keys, credentials = {}, {}
        for name in names:
            token = client.post(routes.SITES, json={"name": name}, headers=admin).json()[
                "enrollment_token"
            ]
            keys[name] = crypto.generate_signing_key()
            enrolled = client.post(
                routes.ENROLL,
                json={
                    "token": token,
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
            headers=admin,
            json={
                "name": "bench",
                "config": {"model": args.model, "rounds": 1, "sites": names},
            },
        ).json()
        assert (
            client.post(routes.RUN_START.format(run_id=run["id"]), headers=admin).status_code == 200
        )
        bundle = client.get(
            routes.MODEL_BUNDLE.format(run_id=run["id"], version=0), headers=admin
        ).content
        base = open_bundle(bundle, {crypto.key_id(server_key): server_key}).tensors
        model_bytes = sum(t.numel() * t.element_size() for t in base.values())
        envelopes: dict[str, bytes] = {}
        round_key_public = None
        for index, name in enumerate(names):
            signed = client.get(
                routes.TASKS_NEXT, headers={"Authorization": f"Bearer {credentials[name]}"}
            ).json()["task"]
            task = verify_task(SignedTask.model_validate(signed), server_key)
            round_key_public = crypto.x25519_public_from_bytes(
                base64.b64decode(task.round_public_key)
            )
            generator = torch.Generator().manual_seed(index)
            change = {k: torch.randn(t.shape, generator=generator) * 1e-3 for k, t in base.items()}
            header = UpdateHeader(
                run_id=run["id"],
                round=1,
                site=name,
                base_weights_sha256=task.weights_sha256,
                num_samples=10 + index,
                created_at=datetime.now(UTC),
            )
            envelopes[name] = seal_update(
                header, change, round_key=round_key_public, site_key=keys[name]
            )
        del base
        path = routes.UPDATES.format(run_id=run["id"], round=1)
        lifetime_before = rss(server.pid, "VmHWM")
        baseline = rss(server.pid, "VmRSS")
        reset = True
        try:
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")
        except OSError:
            reset = False
        answers: dict[str, int] = {}
        # one client (and connection) per site, made before the clock starts: building an
        # httpx.Client loads a TLS context (~30 ms of this process's CPU each), which is
        # neither an upload byte nor the server's work
        own = {name: httpx.Client(base_url=url, timeout=120) for name in names}

        def chunks(data: bytes) -> Iterator[bytes]:
            # 1 MiB views: handing httpx the whole body makes httpcore copy what is left
            # of it after every socket send, quadratic work in the sites, not the server
            view = memoryview(data)
            for offset in range(0, len(view), MB):
                yield bytes(view[offset : offset + MB])

        def upload(name: str) -> None:
            response = own[name].put(
                path,
                content=chunks(envelopes[name]),
                headers={
                    "Authorization": f"Bearer {credentials[name]}",
                    "Content-Type": routes.UPDATE_CONTENT_TYPE,
                    "Content-Length": str(len(envelopes[name])),
                },
            )
            answers[name] = response.status_code

        threads = [threading.Thread(target=upload, args=(name,)) for name in names]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        overhead = time.perf_counter() - started
        for each in own.values():
            each.close()
        assert all(code == 200 for code in answers.values()), answers
        models = client.get(routes.MODELS.format(run_id=run["id"]), headers=admin).json()
        assert [m["version"] for m in models] == [0, 1], models
        round_peak = rss(server.pid, "VmHWM")
        lifetime = max(lifetime_before, round_peak)
        metrics = client.get(routes.METRICS).text
        aggregation = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("fedseg_aggregation_seconds_sum")
        )
    finally:
        server.terminate()
        server.wait(10)
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    # --- the lower bound, same machine, same run -----------------------------------------
    payloads = [envelopes[name] for name in names]
    transfer = loopback_transfer(payloads)
    # the round's private key is gone with the server: re-seal the same plaintext sizes to a
    # fresh key so the bound decrypts exactly as many bytes
    round_key = crypto.generate_sealing_key()
    resealed = []
    for index, name in enumerate(names):
        generator = torch.Generator().manual_seed(index)
        change = {
            k: torch.randn(t.shape, generator=generator) * 1e-3
            for k, t in spec_tensors(bundle).items()
        }
        header = UpdateHeader(
            run_id=run["id"],
            round=1,
            site=name,
            base_weights_sha256="0" * 64,
            num_samples=10 + index,
            created_at=datetime.now(UTC),
        )
        resealed.append(
            seal_update(header, change, round_key=round_key.public_key(), site_key=keys[name])
        )
    base = arrays.from_safetensors(read_bundle_files(bundle).weights)
    started = time.perf_counter()
    accumulator = Accumulator(arrays.spec_of(base))
    for name, data in zip(names, resealed, strict=True):
        # the same primitives the server uses, in memory: hash + verify, chunked unseal
        # into one buffer, zero-copy arrays, accumulate
        envelope = parse_header_only(data)
        crypto.verify(keys[name].public_key(), data[-64:], hashlib.sha256(data[:-64]).digest())
        hashlib.sha256(data).digest()
        reader = io.BytesIO(data)
        reader.seek(envelope[1])
        buffer = crypto.unseal_stream(
            round_key,
            reader.read,
            len(data) - envelope[1] - 64,
            envelope[0],
            context=UPDATE_CONTEXT,
        )
        accumulator.add(arrays.from_safetensors(buffer), float(10 + names.index(name)))
    consensus = accumulator.consensus(base)
    _manifest, files = make_bundle(
        run_id=run["id"],
        version=1,
        model=args.model,
        model_params={},
        weights=arrays.to_safetensors(consensus),
        signing_key=crypto.generate_signing_key(),
    )
    hashlib.sha256(files.weights).digest()
    compute = time.perf_counter() - started
    bound = transfer + compute
    target_rss = 300 + 3 * model_bytes / MB
    print(
        f"sites: {args.sites}   model: {args.model} ({model_bytes / 1e6:.1f} MB)"
        f"   envelope: {len(payloads[0]) / 1e6:.1f} MB"
    )
    print(f"server round overhead (first upload byte -> next bundle ready): {overhead:.3f} s")
    print(f"  of which aggregation+sign+store (server histogram):            {aggregation:.3f} s")
    print(
        f"server peak RSS during the round: {round_peak:.0f} MB"
        + ("" if reset else " (could not reset; lifetime)")
    )
    print(f"server RSS before the uploads:    {baseline:.0f} MB")
    print(f"server peak RSS over its life:    {lifetime:.0f} MB   target <= {target_rss:.0f} MB")
    print(
        f"lower bound: {bound:.3f} s = loopback {transfer:.3f} s"
        f" + verify/unseal/accumulate/hash/sign {compute:.3f} s"
    )
    print(f"ratio overhead / bound: {overhead / bound:.2f}x   target <= {TARGET_RATIO}x")
    print(
        f"target overhead <= {TARGET_RATIO}x bound:             "
        f"{'PASS' if overhead <= TARGET_RATIO * bound else 'MISS'} ({overhead / bound:.2f}x)"
    )
    print(
        f"target peak RSS <= 300 MB + 3x model = {target_rss:.0f} MB: "
        f"{'PASS' if lifetime <= target_rss else 'MISS'} ({lifetime:.0f} MB)"
    )


def parse_header_only(data: bytes) -> tuple[bytes, int]:
    """The header bytes (AEAD associated data) and where the sealed payload starts."""
    _magic, length = struct.unpack_from(">8sI", data)
    return data[12 : 12 + length], 12 + length


def spec_tensors(bundle: bytes) -> Tensors:
    return from_safetensors(read_bundle_files(bundle).weights)


if __name__ == "__main__":
    main()
