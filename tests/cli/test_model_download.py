"""``admin models download`` accepts exactly one documented hash: the weights' sha256."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from fedseg.admin_cli import download_model
from shared import crypto
from shared.bundle import bundle_tar, make_bundle
from shared.errors import IntegrityError
from shared.schemas import ModelVersion
from shared.tensors import to_safetensors


class FakeAdmin:
    """Lists one version under a chosen hash and serves its bundle."""

    def __init__(self, listed: str, tar: bytes) -> None:
        self.listed, self.tar = listed, tar

    def list_models(self, run_id: str) -> list[ModelVersion]:
        return [
            ModelVersion(
                run_id=run_id, version=0, weights_sha256=self.listed, created_at=datetime.now(UTC)
            )
        ]

    def download_bundle(self, run_id: str, version: int) -> bytes:
        return self.tar


@pytest.fixture
def bundle() -> tuple[bytes, str]:
    key = crypto.generate_signing_key()
    manifest, files = make_bundle(
        run_id="run1",
        version=0,
        model="segresnet-small",
        model_params={},
        weights=to_safetensors({"w": torch.ones(2)}),
        signing_key=key,
    )
    return bundle_tar(files), manifest.weights_sha256


def test_the_weights_hash_is_accepted(bundle, tmp_path: Path) -> None:
    tar, weights_sha = bundle
    result = download_model(FakeAdmin(weights_sha, tar), "run1", tmp_path / "m.tar")  # type: ignore[arg-type]
    assert result["weights_sha256"] == weights_sha and (tmp_path / "m.tar").read_bytes() == tar


@pytest.mark.parametrize("which", ["tar", "other"])
def test_any_other_hash_fails_closed(bundle, tmp_path: Path, which: str) -> None:
    """Defect: the tar's sha256 was accepted as well as the weights' one."""
    tar, _ = bundle
    listed = hashlib.sha256(tar).hexdigest() if which == "tar" else "a" * 64
    with pytest.raises(IntegrityError) as caught:
        download_model(FakeAdmin(listed, tar), "run1", tmp_path / "m.tar")  # type: ignore[arg-type]
    assert caught.value.code == "hash_mismatch"
    assert not (tmp_path / "m.tar").exists()
