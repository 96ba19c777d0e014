"""Sealing: turn a round's trained weights into the update that leaves the site.

Delta against the base, the round's privacy mechanism or optional L2 clipping (a
``release`` function from `client.privacy.round_privacy`), safetensors, header with
the round's ε ledger entry, envelope sealed to the round key and signed by the site;
the ledger records all of it, ``update.bin`` last (see `client.state` for why that
order is the resume rule).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.state import LedgerEntry
from shared import crypto
from shared.files import write_atomic
from shared.schemas import EpsilonEntry, Task, UpdateHeader, canonical_json
from shared.tensors import Tensors, delta, to_safetensors
from shared.updates import seal_update_payload

log = logging.getLogger(__name__)

Release = Callable[[Tensors], tuple[Tensors, float | None]]
"""The delta that leaves the site from the trained one, and its norm before clipping."""


def clip_update(change: Tensors, clip_norm: float) -> tuple[Tensors, float]:
    """Scale ``change`` to an L2 norm of at most ``clip_norm``; return it and the old norm."""
    squares = [t.double().square().sum() for t in change.values() if t.is_floating_point()]
    norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    if norm <= clip_norm:
        return change, norm
    scale = clip_norm / norm
    return {
        name: (t * scale).to(t.dtype) if t.is_floating_point() else t for name, t in change.items()
    }, norm


def seal_round(
    *,
    task: Task,
    site: str,
    site_key: Ed25519PrivateKey,
    weights: Tensors,
    base: Tensors,
    num_samples: int,
    metrics: Mapping[str, float],
    entry: LedgerEntry,
    release: Release | None = None,
    privacy: EpsilonEntry | None = None,
) -> UpdateHeader:
    """Seal the update of one round into ``entry``; from its return on, the update is final.

    ``release`` applies the round's mechanism to the delta (default: clip to the
    run's ``clip_norm`` if set); ``privacy`` is the ledger entry the header carries.
    ``time_seal`` (delta, mechanism, serialise) joins ``metrics`` in the header.
    """
    started = time.perf_counter()
    change = delta(weights, base)
    norm: float | None = None
    if release is not None:
        change, norm = release(change)
    elif task.privacy.clip_norm is not None:
        change, norm = clip_update(change, task.privacy.clip_norm)
    payload = to_safetensors(change)
    seconds = time.perf_counter() - started
    header = UpdateHeader(
        run_id=task.run_id,
        round=task.round,
        site=site,
        base_weights_sha256=task.weights_sha256,
        num_samples=num_samples,
        metrics=finite_metrics({**metrics, "time_seal": seconds}),
        privacy=privacy,
        created_at=datetime.now(UTC),
    )
    round_key = crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key))
    envelope = seal_update_payload(header, payload, round_key=round_key, site_key=site_key)
    write_atomic(entry.header, canonical_json(header))
    write_atomic(entry.delta, payload)
    digests = {
        "run_id": task.run_id,
        "round": task.round,
        "upload_path": task.upload_path,
        "base_weights_sha256": task.weights_sha256,
        "delta_sha256": hashlib.sha256(payload).hexdigest(),
        "update_sha256": hashlib.sha256(envelope).hexdigest(),
        "num_samples": num_samples,
        "mechanism": task.privacy.mechanism,
        "clip_norm": task.privacy.clip_norm,
        "delta_norm_before_clip": norm,
    }
    write_atomic(entry.digests, json.dumps(digests, indent=2).encode())
    write_atomic(entry.update, envelope)  # last: from here on this update is final
    return header


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The finite metrics only: the server refuses NaN and Inf (a diverged loss, say)."""
    kept = {name: value for name, value in metrics.items() if math.isfinite(value)}
    if len(kept) != len(metrics):
        log.warning("left out non-finite metrics: %s", sorted(set(metrics) - set(kept)))
    return kept
