"""Checks the integration tests share: bundles against the sites' own ledgers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from fedseg.simulate import Federation
from shared import crypto
from shared.bundle import Bundle, open_bundle, read_bundle_files
from shared.tensors import Tensors, from_safetensors


def trusted_keys(federation: Federation) -> dict[str, object]:
    key = federation.server_key
    return {crypto.key_id(key): key}


def open_version(federation: Federation, run_id: str, version: int) -> tuple[bytes, Bundle]:
    """Download a model version through the admin API and verify it with the server key."""
    data = federation.admin.download_bundle(run_id, version)
    key = federation.server_key
    return data, open_bundle(data, {crypto.key_id(key): key})


def weights_sha256(bundle_bytes: bytes) -> str:
    return hashlib.sha256(read_bundle_files(bundle_bytes).weights).hexdigest()


def ledger_update(entry: Path) -> tuple[dict, Tensors]:
    """A site's record of one round: its header and the plaintext delta it sealed."""
    header = json.loads((entry / "header.json").read_text())
    delta = from_safetensors((entry / "delta.safetensors").read_bytes())
    return header, delta


def weighted_consensus(previous: Tensors, updates: list[tuple[int, Tensors]]) -> Tensors:
    """previous + sum_i n_i * delta_i / sum_i n_i, computed in float64."""
    total = sum(n for n, _ in updates)
    out: Tensors = {}
    for name, tensor in previous.items():
        acc = tensor.double().clone()
        for n, delta in updates:
            acc += delta[name].double() * (n / total)
        out[name] = acc
    return out


def assert_close(actual: Tensors, expected: Tensors, *, what: str) -> None:
    assert set(actual) == set(expected), f"{what}: tensor names differ"
    for name, tensor in actual.items():
        if not tensor.is_floating_point():
            assert torch.equal(tensor, expected[name].to(tensor.dtype)), f"{what}: {name}"
            continue
        torch.testing.assert_close(
            tensor.double(), expected[name], rtol=1e-5, atol=1e-6, msg=f"{what}: {name}"
        )
