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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.services.envelopes import tensors_from_buffer
from shared.bundle import MANIFEST, WEIGHTS, bundle_tar, make_bundle
from shared.errors import BundleError
from shared.schemas import BundleManifest, RunConfig
from shared.tensors import Tensors, state_tensors


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
    tensors: Mapping[str, torch.Tensor],
    signing_key: Ed25519PrivateKey,
) -> Bundle:
    """Serialise and sign ``tensors`` once as model version ``version``."""
    manifest, files = make_bundle(
        run_id=run_id,
        round_number=version,
        model=config.model,
        model_params=config.model_params,
        tensors=tensors,
        signing_key=signing_key,
    )
    data = bundle_tar(files)
    del files
    return Bundle(
        run_id=run_id,
        version=version,
        manifest=manifest,
        data=data,
        key=hashlib.sha256(data).hexdigest(),
    )


def bundle_from_bytes(run_id: str, version: int, data: bytes) -> Bundle:
    """Re-read one of our own stored bundles (its manifest only; trusted storage)."""
    manifest_bytes = _member(data, MANIFEST)
    manifest = BundleManifest.model_validate_json(bytes(manifest_bytes))
    return Bundle(
        run_id=run_id,
        version=version,
        manifest=manifest,
        data=data,
        key=hashlib.sha256(data).hexdigest(),
    )


def weights_view(bundle: Bundle) -> Tensors:
    """Read-only tensors viewing the bundle's weights, without a copy."""
    return tensors_from_buffer(_member(bundle.data, WEIGHTS))


def _member(data: bytes, name: str) -> memoryview:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            raise BundleError(f"stored bundle has no {name}") from None
        return memoryview(data)[member.offset_data : member.offset_data + member.size]


def initial_weights(config: RunConfig) -> Tensors:
    """Round-0 weights from the model registry and the run's seed (deterministic)."""
    from shared import models  # MONAI is heavy: import it only when a run starts

    return state_tensors(models.build(config.model, config.model_params, config.seed).state_dict())


def check_model(config: RunConfig) -> dict[str, Any]:
    """Validate the model name and parameters; returns the resolved parameters."""
    from shared import models

    return models.resolve_params(config.model, config.model_params).model_dump(mode="json")
