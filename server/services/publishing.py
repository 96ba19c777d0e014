"""Signed consensus bundles: build once per model version, keep the current one in memory.

A bundle is written to the blob store (temp, fsync, rename) and only then
recorded in the database, so a crash never leaves a half-written bundle behind a
model version. The latest bundle of each running run is held in memory: every
site downloads it, and serving bytes from memory is several times faster than
reading a file per request.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.db.engine import Database
from server.storage import BlobStore
from shared import models
from shared.bundle import MANIFEST, Bundle, bundle_tar, make_bundle, tar_member
from shared.errors import NotFound, Unavailable
from shared.schemas import BundleManifest, RunConfig


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
        version=version,
        model=config.model,
        model_params=config.model_params,
        weights=weights,
        signing_key=signing_key,
    )
    data = bundle_tar(files)
    del files
    return _hashed(Bundle(manifest=manifest, data=data))


def stored_bundle(data: bytes) -> Bundle:
    """Re-read one of our own stored bundles (its manifest only; trusted storage)."""
    manifest = BundleManifest.model_validate_json(bytes(tar_member(data, MANIFEST)))
    return _hashed(Bundle(manifest=manifest, data=data))


async def read_bundle(blobs: BlobStore, key: str, *, run_id: str, version: int) -> Bundle:
    """A stored bundle by its blob key; `Unavailable` when storage lost it."""
    try:
        data = await to_thread.run_sync(blobs.get_bytes, key)
    except FileNotFoundError:
        raise Unavailable(f"bundle of {run_id} v{version} is missing from storage") from None
    return await to_thread.run_sync(stored_bundle, data)


async def load_bundle(db: Database, blobs: BlobStore, run_id: str, version: int) -> Bundle:
    """Model version ``version`` of a run from storage; `NotFound` when there is none."""
    async with db.read() as repo:
        row = await repo.model_version(run_id, version)
        key = None if row is None else row.bundle
    if key is None:
        raise NotFound(f"run {run_id} has no model version {version}")
    return await read_bundle(blobs, key, run_id=run_id, version=version)


def _hashed(bundle: Bundle) -> Bundle:
    """Hash the tar here, once, off the event loop (callers run in a worker thread)."""
    _ = bundle.sha256
    return bundle


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
