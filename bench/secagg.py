"""Secure aggregation's cost per round, next to the same round without it, in one run.

Usage: .venv/bin/python bench/secagg.py [--sites 3 8 16 32] [--drop-at 8] [--model segresnet]

N simulated sites in this process and the server in a child process (spawned, so its
RSS is the server's alone), with the registered model's tensor spec (the 4.7 M-parameter
SegResNet by default) and random float32 deltas (training is not timed). Per N, two rounds:

- plain: each site serialises and seals its delta to the round key and signs it (the
  update envelope of today); the server verifies, unseals and accumulates (streaming
  FedAvg, `server.services.aggregation.Accumulator`);
- secure aggregation: advertise, share, masked input (signed), consistency check,
  unmask (`shared.secagg`), every site with every step and the server summing inputs
  as they arrive, then unmasking.

Printed per N: the critical path in CPU seconds (the slowest site's CPU over all its
steps plus the server's, since sites run in parallel), the bytes one site sends and
receives (the model bundle, the same in both, is left out), the server's peak RSS above
its baseline, and the largest difference between the two rounds' means against the
quantisation bound. Rows ``N-1`` have one site drop after the share step (the server
then rebuilds its mask key and removes its pairwise masks), against a plain round of
the N - 1 that uploaded. Then the targets with PASS or MISS: at N = 8 the protocol adds at
most 1.0 s; a site's upload is at most 1.1x the plain upload plus O(N) key material
(at most 512 bytes per share holder plus 1 KiB); the server's memory stays O(model)
(peak above baseline at most 3x the model + 16 MB at every N).

CPU time, not wall time: the machine is shared, and CPU time is what a site or the
server spends whatever else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from server.services.aggregation import Accumulator
from shared import arrays, crypto
from shared.schemas import TensorSpec, UpdateHeader
from shared.secagg import keys as secagg_keys
from shared.secagg import site as site_steps
from shared.secagg.aggregation import MaskedSum
from shared.secagg.config import SecureAggregationConfig, levels, neighbourhood_size
from shared.secagg.consistency import sign_survivors
from shared.secagg.graph import holders, neighbours
from shared.secagg.keys import RoundContext
from shared.secagg.messages import MaskedInput
from shared.updates import parse_envelope, seal_update_payload, unseal_payload, verify_envelope

MB = 1024 * 1024
CONTEXT = RoundContext(run_id="bench", round=1)
CLIP_RANGE = 0.05
BITS = 16
DEGREE = 16
ALLOWANCE_MB = 16  # modules first loaded during a round, pipes, small objects: not O(model)


# --- the server, in a child process ------------------------------------------------------


def _status(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _serve_plain(
    conn: Connection, spec: list[TensorSpec], round_key: bytes, site_keys: dict[str, bytes]
) -> None:
    private = crypto.x25519_private_from_bytes(round_key)
    public = {name: crypto.ed25519_public_from_bytes(raw) for name, raw in site_keys.items()}
    cpu = time.process_time()
    accumulator = Accumulator(spec)
    spent = time.process_time() - cpu
    while True:
        message = conn.recv()
        if message[0] == "finish":
            break
        data = conn.recv_bytes()
        cpu = time.process_time()
        envelope = parse_envelope(data)
        verify_envelope(envelope, public[envelope.header.site])
        payload = unseal_payload(envelope, private)
        del data
        accumulator.add(arrays.from_safetensors(payload), float(envelope.header.num_samples))
        del payload, envelope
        spent += time.process_time() - cpu
    cpu = time.process_time()
    mean = accumulator.mean()
    spent += time.process_time() - cpu
    conn.send(("done", spent, _status("VmHWM")))
    conn.send_bytes(arrays.to_safetensors(mean))


def _serve_secagg(conn: Connection, setup: dict[str, Any], site_keys: dict[str, bytes]) -> None:
    public = {name: crypto.ed25519_public_from_bytes(raw) for name, raw in site_keys.items()}
    cpu = time.process_time()
    total = MaskedSum(**setup)
    spent = time.process_time() - cpu
    while True:
        message = conn.recv()
        if message[0] == "input":
            _kind, site, partners, signature = message
            data = conn.recv_bytes()
            cpu = time.process_time()
            # a masked input travels signed like any update: verify before use
            crypto.verify(public[site], signature, crypto.sha256(data))
            vector = np.frombuffer(data, dtype=np.uint32)
            total.add(
                MaskedInput(
                    site=site,
                    run_id=CONTEXT.run_id,
                    round=CONTEXT.round,
                    partners=partners,
                    vector=vector,
                )
            )
            del vector, data
            spent += time.process_time() - cpu
        elif message[0] == "request":
            cpu = time.process_time()
            request = total.unmask_request()
            spent += time.process_time() - cpu
            conn.send(request)
        elif message[0] == "sign":
            cpu = time.process_time()
            request = total.signed_request(request, message[1])
            spent += time.process_time() - cpu
            conn.send(request)
        else:
            _kind, answers, request = message
            cpu = time.process_time()
            mean, _weight = total.unmask(answers, request)
            spent += time.process_time() - cpu
            conn.send(("done", spent, _status("VmHWM")))
            conn.send_bytes(arrays.to_safetensors(mean))
            return


def server_child(conn: Connection) -> None:
    """Entry point of the server process: report the baseline, then serve one round."""
    _reset_peak()
    conn.send(_status("VmRSS"))
    mode, *arguments = conn.recv()
    _reset_peak()
    if mode == "plain":
        _serve_plain(conn, *arguments)
    else:
        _serve_secagg(conn, *arguments)
    conn.close()


class Server:
    """The child process and its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=server_child, args=(child,))
        self.process.start()
        child.close()
        self.baseline = float(self.conn.recv())

    def finish(self) -> tuple[float, float, arrays.Arrays]:
        _done, cpu, peak = self.conn.recv()
        mean = arrays.from_safetensors(self.conn.recv_bytes())
        self.process.join(60)
        return cpu, peak - self.baseline, mean


# --- the sites, in this process ----------------------------------------------------------


def model_spec(name: str) -> list[TensorSpec]:
    """The registered model's float tensors (building it needs torch; only here)."""
    from shared.models import build
    from shared.tensors import spec_of, state_tensors

    return [
        item for item in spec_of(state_tensors(build(name).state_dict())) if item.dtype == "float32"
    ]


def delta(spec: list[TensorSpec], seed: int) -> arrays.Arrays:
    """A site's random delta: benchmark data, not a secret, so numpy's generator is fine."""
    rng = np.random.default_rng(seed)
    return {item.name: rng.normal(0, 1e-3, item.shape).astype(np.float32) for item in spec}


@dataclass
class Outcome:
    critical_s: float
    sent: int
    received: int
    upload: int
    peak_mb: float
    mean: arrays.Arrays
    site_cpu: dict[str, float] = field(default_factory=dict)


def number(name: str) -> int:
    """A site's number (``site-07`` -> 7): seeds its delta and sets its weight, 10 + number."""
    return int(name.rsplit("-", 1)[1])


def plain_round(spec: list[TensorSpec], names: list[str]) -> Outcome:
    round_key = crypto.generate_sealing_key()
    site_keys = {name: crypto.generate_signing_key() for name in names}
    server = Server()
    server.conn.send(
        (
            "plain",
            spec,
            crypto.x25519_private_bytes(round_key),
            {name: crypto.public_bytes(key.public_key()) for name, key in site_keys.items()},
        )
    )
    site_cpu: dict[str, float] = {}
    sizes = []
    for name in names:
        index = number(name)
        change = delta(spec, index)
        cpu = time.process_time()
        header = UpdateHeader(
            run_id=CONTEXT.run_id,
            round=CONTEXT.round,
            site=name,
            base_weights_sha256="0" * 64,
            num_samples=10 + index,
            created_at=datetime.now(UTC),
        )
        envelope = seal_update_payload(
            header,
            arrays.to_safetensors(change),
            round_key=round_key.public_key(),
            site_key=site_keys[name],
        )
        site_cpu[name] = time.process_time() - cpu
        sizes.append(len(envelope))
        server.conn.send(("envelope",))
        server.conn.send_bytes(envelope)
        del envelope, change
    server.conn.send(("finish",))
    server_cpu, peak, mean = server.finish()
    return Outcome(
        critical_s=max(site_cpu.values()) + server_cpu,
        sent=max(sizes),
        received=0,
        upload=max(sizes),
        peak_mb=peak,
        mean=mean,
        site_cpu=site_cpu,
    )


def secagg_round(
    spec: list[TensorSpec], names: list[str], threshold: int, dropped: frozenset[str] = frozenset()
) -> tuple[Outcome, int]:
    """One round; ``dropped`` sites go silent after the share step (the costly dropout)."""
    site_cpu = dict.fromkeys(names, 0.0)
    sent = dict.fromkeys(names, 0)
    received = dict.fromkeys(names, 0)
    upload = dict.fromkeys(names, 0)

    def timed(name: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        cpu = time.process_time()
        result = call(*args, **kwargs)
        site_cpu[name] += time.process_time() - cpu
        return result

    signing = {name: crypto.generate_signing_key() for name in names}
    enrolled = {name: key.public_key() for name, key in signing.items()}
    round_keys = {name: timed(name, secagg_keys.generate_round_keys) for name in names}
    adverts = {
        name: timed(
            name,
            secagg_keys.advertise,
            round_keys[name],
            site=name,
            context=CONTEXT,
            signing_key=signing[name],
        )
        for name in names
    }
    graph = neighbours(names, degree=DEGREE, seed=CONTEXT.label())
    for name in names:
        sent[name] += adverts[name].size()
        mine = {peer: adverts[peer] for peer in holders(graph, name)}
        received[name] += sum(advert.size() for advert in mine.values())
        timed(name, secagg_keys.verify_adverts, mine, context=CONTEXT, enrolled_keys=enrolled)
    inbox: dict[str, list[Any]] = {name: [] for name in names}
    for name in names:
        sealed = timed(
            name,
            site_steps.make_shares,
            round_keys[name],
            site=name,
            context=CONTEXT,
            graph=graph,
            adverts=adverts,
            threshold=threshold,
        )
        for item in sealed:
            sent[name] += item.size()
            inbox[item.recipient].append(item)
    held = {}
    for name in names:
        received[name] += sum(item.size() for item in inbox[name])
        held[name] = timed(
            name,
            site_steps.receive_shares,
            inbox[name],
            keys=round_keys[name],
            site=name,
            context=CONTEXT,
            graph=graph,
            adverts=adverts,
        )
    server = Server()
    server.conn.send(
        (
            "secagg",
            {
                "spec": spec,
                "context": CONTEXT,
                "graph": graph,
                "adverts": adverts,
                "shared": names,
                "threshold": threshold,
                "clip_range": CLIP_RANGE,
                "bits": BITS,
            },
            {name: crypto.public_bytes(key.public_key()) for name, key in signing.items()},
        )
    )
    for name in names:
        if name in dropped:
            continue
        index = number(name)
        change = delta(spec, index)
        masked = timed(
            name,
            site_steps.mask_input,
            change,
            spec=spec,
            weight=10 + index,
            keys=round_keys[name],
            site=name,
            context=CONTEXT,
            graph=graph,
            adverts=adverts,
            held=held[name],
            clip_range=CLIP_RANGE,
            bits=BITS,
        )
        signature = timed(
            name, lambda m=masked, n=name: crypto.sign(signing[n], crypto.sha256(m.vector.data))
        )
        upload[name] = masked.size()
        sent[name] += masked.size()
        server.conn.send(("input", name, masked.partners, signature))
        server.conn.send_bytes(masked.vector)
        del masked, change
    server.conn.send(("request",))
    request = server.conn.recv()
    signatures = {}
    for name in sorted(request.survivors):
        received[name] += request.size()
        signatures[name], _digest = timed(
            name,
            sign_survivors,
            request,
            site=name,
            context=CONTEXT,
            signing_key=signing[name],
            signed=None,
        )
        sent[name] += len(signatures[name])
    server.conn.send(("sign", signatures))
    request = server.conn.recv()
    answers = []
    for name in sorted(request.survivors):
        received[name] += request.size()
        answer, _revealed = timed(
            name,
            site_steps.answer_unmask,
            request,
            site=name,
            context=CONTEXT,
            held=held[name],
            threshold=threshold,
            revealed={},
            enrolled_keys=enrolled,
        )
        sent[name] += answer.size()
        answers.append(answer)
    server.conn.send(("answers", answers, request))
    server_cpu, peak, mean = server.finish()
    largest = max(len(holders(graph, name)) for name in names)
    return (
        Outcome(
            critical_s=max(site_cpu.values()) + server_cpu,
            sent=max(sent.values()),
            received=max(received.values()),
            upload=max(upload.values()),
            peak_mb=peak,
            mean=mean,
            site_cpu=site_cpu,
        ),
        largest,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 8, 16, 32])
    parser.add_argument("--model", default="segresnet")
    parser.add_argument(
        "--drop-at",
        type=int,
        nargs="*",
        default=[8],
        help="also run these N with one site dropping after the share step",
    )
    args = parser.parse_args()
    spec = model_spec(args.model)
    parameters = sum(int(np.prod(item.shape)) for item in spec)
    model_mb = parameters * 4 / MB
    print(f"model {args.model}: {parameters / 1e6:.2f} M parameters, {model_mb:.1f} MB float32")
    print(
        f"secure aggregation: clip_range {CLIP_RANGE}, bits {BITS}, "
        "threshold 2/3 of a neighbourhood (rounded up), "
        f"graph degree {DEGREE} above 16 sites"
    )
    print()
    header = (
        f"{'N':>4} | {'plain s':>7} | {'secagg s':>8} | {'added s':>7} | {'plain up MB':>11} | "
        f"{'secagg up MB':>12} | {'keys sent KB':>12} | {'recv KB':>7} | {'RSS plain MB':>12} | "
        f"{'RSS secagg MB':>13} | {'max err / bound':>15}"
    )
    print(header)
    print("-" * len(header))
    verdicts: list[tuple[str, bool]] = []
    rows = [(count, 0) for count in args.sites] + [(count, 1) for count in args.drop_at]
    for count, drops in rows:
        names = [f"site-{i:02d}" for i in range(count)]
        dropped = frozenset(names[count - drops :])
        survivors = [name for name in names if name not in dropped]
        holders_count = neighbourhood_size(SecureAggregationConfig(neighbours=DEGREE), count)
        threshold = max(2, -(-2 * holders_count // 3))
        plain = plain_round(spec, survivors)
        secure, holders_per_site = secagg_round(spec, names, threshold, dropped)
        weight = sum(10 + number(name) for name in survivors)
        bound = len(survivors) * CLIP_RANGE / (levels(BITS) * weight) + 1e-7 * CLIP_RANGE
        error = max(float(np.max(np.abs(secure.mean[k] - plain.mean[k]))) for k in plain.mean)
        added = secure.critical_s - plain.critical_s
        key_material = secure.sent - secure.upload
        label = f"{count}" + (f"-{drops}" if drops else "")
        print(
            f"{label:>4} | {plain.critical_s:>7.2f} | {secure.critical_s:>8.2f} | {added:>7.2f} | "
            f"{plain.upload / MB:>11.2f} | {secure.upload / MB:>12.2f} | "
            f"{key_material / 1024:>12.1f} | "
            f"{secure.received / 1024:>7.1f} | {plain.peak_mb:>12.1f} | {secure.peak_mb:>13.1f} | "
            f"{error / bound:>15.3f}",
            flush=True,
        )
        where = f"N = {label}"
        if count == 8:
            verdicts.append(
                (f"{where}: secure aggregation adds {added:.2f} s (target <= 1.0 s)", added <= 1.0)
            )
        verdicts.append(
            (
                f"{where}: upload {secure.upload / MB:.2f} MB "
                f"<= 1.1 x {plain.upload / MB:.2f} MB, "
                f"key material {key_material} B <= {512 * holders_per_site + 1024} B",
                secure.upload <= 1.1 * plain.upload
                and key_material <= 512 * holders_per_site + 1024,
            )
        )
        verdicts.append(
            (
                f"{where}: server peak above baseline {secure.peak_mb:.1f} MB "
                f"<= 3 x model + {ALLOWANCE_MB} MB ({3 * model_mb + ALLOWANCE_MB:.1f} MB)",
                secure.peak_mb <= 3 * model_mb + ALLOWANCE_MB,
            )
        )
        verdicts.append(
            (f"{where}: mean within the quantisation bound of plain FedAvg", error <= bound)
        )
    print()
    for text, good in verdicts:
        print(f"{'PASS' if good else 'MISS'}  {text}")


if __name__ == "__main__":
    main()
