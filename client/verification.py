"""What the site checks of what the server sends: the base model, and each receipt.

Both fail closed: a bundle that is not exactly the model the task names is deleted
and refused; a receipt that does not acknowledge exactly the envelope the site sent
is an `IntegrityError`, and nothing is recorded as accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import crypto
from shared.bundle import open_bundle
from shared.errors import BundleError, FedsegError, IntegrityError
from shared.schemas import Task, UpdateReceipt
from shared.tensors import Tensors


def open_base_model(
    path: Path,
    task: Task,
    server_key: Ed25519PublicKey,
    retired: Mapping[str, tuple[Ed25519PublicKey, datetime]] | None = None,
) -> Tensors:
    """The tensors of the downloaded bundle at ``path`` once it proves to be the task's model.

    ``retired`` holds the server keys a rotation replaced, with when: a bundle they
    signed before their retirement still verifies, one signed after it is refused.
    """
    version = task.round - 1
    retired = retired or {}
    trusted = {key_id: key for key_id, (key, _) in retired.items()}
    trusted[crypto.key_id(server_key)] = server_key
    try:
        opened = open_bundle(path, trusted)
        manifest = opened.manifest
        old = retired.get(manifest.key_id)
        if old is not None and manifest.created_at >= old[1]:
            raise BundleError(
                "bundle is signed by a retired server key after its retirement",
                code="unknown_key",
            )
        if manifest.weights_sha256 != task.weights_sha256:
            raise BundleError("bundle weights are not the model the task names")
        if (manifest.run_id, manifest.version) != (task.run_id, version):
            raise BundleError(
                f"bundle is {manifest.run_id} v{manifest.version}, not {task.run_id} v{version}"
            )
        if manifest.model != task.model or manifest.model_params != task.model_params:
            raise BundleError("bundle model differs from the task's model")
    except FedsegError:
        path.unlink(missing_ok=True)  # never keep bytes that failed verification
        raise
    return opened.tensors


def check_receipt(
    receipt: UpdateReceipt, envelope: bytes, *, run_id: str, round_number: int, site: str
) -> None:
    """Fail closed unless the receipt acknowledges exactly the envelope that was sent."""
    expected = hashlib.sha256(envelope).hexdigest()
    if receipt.update_sha256 != expected:
        raise IntegrityError(
            f"round {run_id}/{round_number}: the server's receipt names update sha256 "
            f"{receipt.update_sha256[:16]}…, but the site sent {expected[:16]}…; "
            "not recording it as accepted",
            code="hash_mismatch",
        )
    if (receipt.run_id, receipt.round, receipt.site) != (run_id, round_number, site):
        raise IntegrityError(
            f"the server's receipt is for {receipt.site} in {receipt.run_id}/{receipt.round}, "
            f"not {site} in {run_id}/{round_number}; not recording it as accepted",
            code="hash_mismatch",
        )
