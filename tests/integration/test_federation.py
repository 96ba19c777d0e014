"""A real federation end to end: rounds, consensus maths, Dice, and what the server keeps."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np

from shared import models
from shared.bundle import FILE_NAMES
from shared.errors import FedsegError
from shared.tensors import from_safetensors, state_tensors
from tests.integration.conftest import ROUNDS, SITES, FinishedRun
from tests.integration.helpers import (
    assert_close,
    ledger_update,
    open_version,
    weighted_consensus,
    weights_sha256,
)


def test_run_completes_and_every_round_closes_with_every_sites_update(finished_run: FinishedRun):
    run, rounds = finished_run.run, finished_run.rounds
    assert run.status == "completed"
    assert [info.round for info in sorted(rounds, key=lambda r: r.round)] == list(
        range(1, ROUNDS + 1)
    )
    names = {site.name for site in finished_run.federation.sites}
    for info in rounds:
        assert info.status == "closed", info
        assert info.closed_at is not None and info.opened_at is not None
        assert {p.site for p in info.sites if p.state == "uploaded"} == names, info.sites
        for site in finished_run.federation.sites:
            entry = finished_run.federation.ledger_entry(site, info.round)
            receipt = finished_run.federation.read_receipt(site, info.round)
            assert receipt is not None, f"{site.name} has no receipt for round {info.round}"
            # what the site sealed and sent is exactly what the server acknowledged
            sent = hashlib.sha256((entry / "update.bin").read_bytes()).hexdigest()
            assert receipt["update_sha256"] == sent
    versions = finished_run.federation.admin.list_models(run.id)
    assert sorted(v.version for v in versions) == list(range(ROUNDS + 1))


def test_each_consensus_verifies_and_is_the_weighted_mean_of_the_ledger_deltas(
    finished_run: FinishedRun,
):
    fed, run = finished_run.federation, finished_run.run
    data, previous = open_version(fed, run.id, 0)
    previous_sha = weights_sha256(data)
    # version 0 is the registry's model for the run's seed, nothing else
    initial = state_tensors(
        models.build(run.config.model, run.config.model_params, run.config.seed).state_dict()
    )
    assert_close(previous.tensors, {k: v.double() for k, v in initial.items()}, what="version 0")
    for version in range(1, ROUNDS + 1):
        data, bundle = open_version(fed, run.id, version)
        assert bundle.manifest.run_id == run.id and bundle.manifest.version == version
        updates = []
        for site in fed.sites:
            header, delta = ledger_update(fed.ledger_entry(site, version))
            assert header["round"] == version and header["site"] == site.name
            assert header["kind"] == "delta"
            assert header["base_weights_sha256"] == previous_sha, "trained from another model"
            assert header["num_samples"] > 0
            updates.append((int(header["num_samples"]), delta))
        expected = weighted_consensus(previous.tensors, updates)
        assert_close(bundle.tensors, expected, what=f"version {version}")
        # the round trained from the previous version
        info = fed.admin.get_round(run.id, version)
        assert info.weights_sha256 in (previous_sha, weights_sha256(data))
        previous, previous_sha = bundle, weights_sha256(data)


def test_dice_is_recorded_per_site_per_round(finished_run: FinishedRun):
    rounds = finished_run.federation.admin.list_rounds(finished_run.run.id)
    assert len(rounds) == ROUNDS
    for info in rounds:
        assert len(info.sites) == SITES
        for progress in info.sites:
            for key in ("dice_tc", "dice_wt", "dice_et", "dice_mean"):
                assert key in progress.metrics, (info.round, progress.site, progress.metrics)
                assert 0.0 <= progress.metrics[key] <= 1.0
            regions = [progress.metrics[k] for k in ("dice_tc", "dice_wt", "dice_et")]
            assert abs(progress.metrics["dice_mean"] - sum(regions) / 3) < 1e-6


def _voxel_samples(data_dir: Path) -> list[bytes]:
    """64-byte runs of real voxel data (image and label) from each case of a site."""
    samples = []
    for path in sorted(data_dir.rglob("*.nii.gz")):
        array = np.asarray(nib.load(str(path)).dataobj)
        flat = np.ascontiguousarray(array).reshape(-1)
        nonzero = np.flatnonzero(flat)
        if len(nonzero) < 64:
            continue
        start = int(nonzero[len(nonzero) // 2])
        chunk = flat[start : start + 64 // flat.itemsize].tobytes()
        if len(set(chunk)) > 4:  # informative bytes only, not a run of one value
            samples.append(chunk)
    return samples


def test_server_storage_holds_only_bundles_and_sealed_updates(finished_run: FinishedRun):
    fed = finished_run.federation
    files = [p for p in fed.server_dir.rglob("*") if p.is_file()]
    assert files
    model_names = set(
        state_tensors(
            models.build(
                finished_run.run.config.model, finished_run.run.config.model_params
            ).state_dict()
        )
    )
    sent = {}
    plaintext = set()
    for site in fed.sites:
        for version in range(1, ROUNDS + 1):
            entry = fed.ledger_entry(site, version)
            sent[hashlib.sha256((entry / "update.bin").read_bytes()).hexdigest()] = entry
            plaintext.add(hashlib.sha256((entry / "delta.safetensors").read_bytes()).hexdigest())
    samples = [s for site in fed.sites for s in _voxel_samples(site.data_dir)]
    assert samples, "no voxel samples to look for"
    stored_hashes = set()
    bundles = 0
    for path in files:
        name = path.name.lower()
        assert not name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mgz")), path
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        stored_hashes.add(digest)
        assert digest not in plaintext, f"{path} is a plaintext delta"
        raw = data
        if data[:2] == b"\x1f\x8b":
            raw = gzip.decompress(data)
        assert raw[344:348] not in (b"n+1\x00", b"ni1\x00"), f"{path} is a NIfTI image"
        for sample in samples:
            assert sample not in raw, f"{path} holds voxel bytes of a site's image"
        try:
            tensors = from_safetensors(raw)
        except FedsegError:
            tensors = None
        if tensors is not None:  # a bare safetensors file may only hold model weights
            assert set(tensors) <= model_names, f"{path} holds non-model tensors"
        if tarfile.is_tarfile(BytesIO(data)):
            with tarfile.open(fileobj=BytesIO(data)) as tar:
                assert set(tar.getnames()) == FILE_NAMES, f"{path}: unexpected tar entries"
                weights = tar.extractfile("weights.safetensors")
                assert weights is not None
                assert set(from_safetensors(weights.read())) == model_names
            bundles += 1
    assert bundles >= ROUNDS + 1 or any(p.name == "weights.safetensors" for p in files)
    missing = set(sent) - stored_hashes
    assert not missing, f"sealed updates the server acknowledged but does not hold: {missing}"
