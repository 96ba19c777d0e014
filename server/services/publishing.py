"""Signed consensus bundles: build once per model version, keep the current one in memory.

A bundle is written to the blob store (temp, fsync, rename) and only then
recorded in the database, so a crash never leaves a half-written bundle behind a
model version. The latest bundle of each running run is held in memory: every
site downloads it, and serving bytes from memory is several times faster than
reading a file per request.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import models
from shared.arrays import Arrays, from_safetensors
from shared.bundle import MANIFEST, WEIGHTS, bundle_tar, make_bundle
from shared.errors import BundleError
from shared.schemas import BundleManifest, RunConfig


@dataclass(frozen=True, slots=True)
class Bundle:
    """A signed bundle as served: tar bytes, its blob key (sha256) and its manifest."""

    run_id: str
    version: int
    manifest: BundleManifest
    data: bytes
    key: str


def build_bundle(
    *,
    run_id: str,
    version: int,
    config: RunConfig,
    weights: bytes,
    signing_key: Ed25519PrivateKey,
) -> Bundle:
    """Sign ``weights`` (safetensors bytes) once as model version ``version``."""
    manifest, files = make_bundle(
        run_id=run_id,
        round_number=version,
        model=config.model,
        model_params=config.model_params,
        weights=weights,
        signing_key=signing_key,
    )
    data = bundle_tar(files)
    del files
    return _bundle(run_id=run_id, version=version, manifest=manifest, data=data)


def bundle_from_bytes(run_id: str, version: int, data: bytes) -> Bundle:
    """Re-read one of our own stored bundles (its manifest only; trusted storage)."""
    manifest_bytes = _member(data, MANIFEST)
    manifest = BundleManifest.model_validate_json(bytes(manifest_bytes))
    return _bundle(run_id=run_id, version=version, manifest=manifest, data=data)


def _bundle(*, run_id: str, version: int, manifest: BundleManifest, data: bytes) -> Bundle:
    """A `Bundle` of ``data``, keyed by its sha256 (hashed here, once)."""
    return Bundle(
        run_id=run_id,
        version=version,
        manifest=manifest,
        data=data,
        key=hashlib.sha256(data).hexdigest(),
    )


def weights_view(bundle: Bundle) -> Arrays:
    """Read-only arrays viewing the bundle's weights, without a copy."""
    return from_safetensors(_member(bundle.data, WEIGHTS))


def _member(data: bytes, name: str) -> memoryview:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            raise BundleError(f"stored bundle has no {name}") from None
        return memoryview(data)[member.offset_data : member.offset_data + member.size]


def initial_weights(config: RunConfig) -> bytes:
    """Round-0 weights (safetensors bytes) from the registry and the run's seed.

    Builds the network in this process, importing torch and MONAI, which stay
    loaded for good (~200 MB): the server builds in `model_worker`'s child
    process instead unless told otherwise (tests that have torch loaded anyway).
    """
    from shared.tensors import state_tensors, to_safetensors

    network = models.build(config.model, config.model_params, config.seed)
    return to_safetensors(state_tensors(network.state_dict()))


def check_model(config: RunConfig) -> dict[str, Any]:
    """Validate the model name and parameters (pydantic only); returns the resolved ones."""
    return models.resolve_params(config.model, config.model_params).model_dump(mode="json")
