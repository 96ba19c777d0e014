"""The site's agent: poll, fetch and verify, evaluate, train, seal, record, upload.

The agent only dials out (through a `Transport`) and never touches the data itself
(a `Trainer` does), so it is tested with fakes of both.

Resume rule, the one promise that matters: once ``update.bin`` of a round exists in
the ledger, that round's update is final. A restart (after kill -9 anywhere) re-sends
exactly those bytes, which the server accepts idempotently; it never computes a
second, different update. Before ``update.bin`` exists nothing has left the site, so
the round is simply done again. A 409 for a closed round drops the update for good
(``dropped.json``) and the agent moves on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.state import StateDir
from client.training import (
    Precision,
    SiteData,
    TrainResult,
    evaluate,
    evaluation_roi,
    train,
)
from shared import crypto, routes
from shared.bundle import open_bundle
from shared.errors import AuthError, BundleError, Conflict, FedsegError, Unavailable
from shared.files import write_atomic
from shared.rotation import follow_rotations
from shared.schemas import (
    SignedKeyRotation,
    SignedTask,
    SiteState,
    StatusReport,
    Task,
    TaskPoll,
    UpdateHeader,
    UpdateReceipt,
    canonical_json,
)
from shared.tasks import verify_task
from shared.tensors import Tensors, delta, to_safetensors
from shared.updates import seal_update_payload

log = logging.getLogger(__name__)

DROP_CODES = frozenset({"round_closed", "round_not_open", "stale_round", "update_conflict"})
Outcome = Literal["uploaded", "dropped", "pending"]


class Transport(Protocol):
    """What the agent needs from the server's API (see `client.transport.HttpTransport`)."""

    def poll(self, wait_s: float) -> TaskPoll:
        """Long-poll for the next task."""
        ...

    def download(self, path: str, dest: Path) -> Path:
        """Fetch ``path`` into ``dest`` (resuming); return ``dest``."""
        ...

    def upload(self, path: str, envelope: bytes) -> UpdateReceipt:
        """PUT a sealed update; raises `Conflict` when the round no longer takes it."""
        ...

    def report(self, status: StatusReport) -> None:
        """Best-effort progress report; never raises."""
        ...

    def key_rotations(self) -> list[SignedKeyRotation]:
        """The server's signed key-rotation statements."""
        ...


class Trainer(Protocol):
    """What the agent needs from local training (see `LocalTrainer`)."""

    def evaluate(self, task: Task, weights: Tensors) -> dict[str, float]:
        """Dice of the received model on the site's validation split."""
        ...

    def train(self, task: Task, weights: Tensors) -> TrainResult:
        """Train from ``weights`` as the task says."""
        ...


class LocalTrainer:
    """`Trainer` over `client.training` and data loaded once for the whole process."""

    def __init__(self, data: SiteData, device: torch.device, precision: Precision = "auto"):
        self.data = data
        self.device = device
        self.precision = precision

    def evaluate(self, task: Task, weights: Tensors) -> dict[str, float]:
        """Dice on the validation split the task's training config defines."""
        config = task.training
        _, val = self.data.split(config.val_fraction, config.seed, config.max_val_cases)
        return evaluate(
            task.model,
            task.model_params,
            weights,
            val,
            self.device,
            roi_size=evaluation_roi(config.crop_size),
            precision=self.precision,
        )

    def train(self, task: Task, weights: Tensors) -> TrainResult:
        """Train with a seed drawn from the run, round and config: reproducible per round."""
        digest = hashlib.sha256(f"{task.run_id}/{task.round}/{task.training.seed}".encode())
        seed = int.from_bytes(digest.digest()[:4], "big")
        return train(
            task.model,
            task.model_params,
            weights,
            task.training,
            self.data,
            self.device,
            seed=seed,
            precision=self.precision,
        )


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


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The finite metrics only: the server refuses NaN and Inf (a diverged loss, say)."""
    kept = {name: value for name, value in metrics.items() if math.isfinite(value)}
    if len(kept) != len(metrics):
        log.warning("left out non-finite metrics: %s", sorted(set(metrics) - set(kept)))
    return kept


@dataclass(frozen=True, slots=True)
class AgentKeys:
    """The keys the agent works with: its own signing key and the pinned server key."""

    site: str
    site_key: Ed25519PrivateKey
    server_key: Ed25519PublicKey
    retired: Mapping[str, tuple[Ed25519PublicKey, datetime]] = field(default_factory=dict)


class Agent:
    """Runs rounds for one site; see the module docstring for the resume rule."""

    def __init__(
        self,
        *,
        state: StateDir,
        transport: Transport,
        trainer: Trainer,
        keys: AgentKeys,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state = state
        self.transport = transport
        self.trainer = trainer
        self.keys = keys
        self.clock = clock
        self.sleep = sleep

    # --- one round ---------------------------------------------------------------------

    def _report(
        self,
        task: Task,
        state: SiteState,
        message: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        try:
            self.transport.report(
                StatusReport(
                    run_id=task.run_id,
                    round=task.round,
                    state=state,
                    message=message[:2000] if message else None,
                    metrics=dict(metrics or {}),
                )
            )
        except Exception as exc:  # a status report must never stop a round
            log.debug("status report failed: %s", exc)

    def fetch_model(self, task: Task) -> Tensors:
        """Download the task's base model and verify it against the pinned key and task."""
        version = task.round - 1
        dest = self.state.bundle_path(task.run_id, version)
        self.transport.download(task.bundle_path, dest)
        trusted = {key_id: key for key_id, (key, _) in self.keys.retired.items()}
        trusted[crypto.key_id(self.keys.server_key)] = self.keys.server_key
        try:
            opened = open_bundle(dest, trusted)
            manifest = opened.manifest
            retired = self.keys.retired.get(manifest.key_id)
            if retired is not None and manifest.created_at >= retired[1]:
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
            dest.unlink(missing_ok=True)  # never keep bytes that failed verification
            raise
        return opened.tensors

    def follow_key_rotation(self, key_id: str) -> bool:
        """Pin ``key_id`` if rotations signed from the pinned key lead to it; say so.

        Each step is verified with the key before it (`shared.rotation`); the keys
        left behind are kept as retired. Returns whether the pin moved; a key no
        verified rotation leads to is left for the signature check to refuse.
        """
        if key_id in self.keys.retired:
            return False  # a retired key is never trusted again for new work
        steps = follow_rotations(self.keys.server_key, self.transport.key_rotations())
        ids = [crypto.key_id(key) for key, _ in steps]
        if key_id not in ids:
            log.warning(
                "a task names server key %s…, which no verified rotation leads to", key_id[:16]
            )
            return False
        pin = self.state.load_pin()
        for key, signed in steps[: ids.index(key_id) + 1]:
            pin = pin.rotated(key, retired_at=signed.rotation.rotated_at)
            log.warning(
                "server signing key rotated: %s… replaced by %s…, signed by the pinned key; "
                "pin updated (fingerprint %s)",
                signed.rotation.old_key_id[:16],
                signed.rotation.new_key_id[:16],
                pin.server_fingerprint,
            )
        self.state.save_pin(pin)
        self.keys = replace(self.keys, server_key=pin.public_key(), retired=pin.retired())
        return True

    def run_task(self, signed: SignedTask) -> Outcome:
        """Do one round's work, or re-send the round's sealed update if it exists."""
        if signed.key_id != crypto.key_id(self.keys.server_key):
            self.follow_key_rotation(signed.key_id)
        task = verify_task(signed, self.keys.server_key)
        if task.site != self.keys.site:
            raise AuthError(f"task is addressed to {task.site}, not {self.keys.site}")
        entry = self.state.ledger(task.run_id, task.round)
        if entry.sealed:
            log.info("round %s/%d: re-sending the sealed update", task.run_id, task.round)
            return self._upload(task.run_id, task.round, task.upload_path, task)
        timings: dict[str, float] = {}
        self._report(task, "downloading")
        started = time.perf_counter()
        base = self.fetch_model(task)
        timings["time_download"] = time.perf_counter() - started

        self._report(task, "evaluating")
        started = time.perf_counter()
        dice = self.trainer.evaluate(task, base)
        timings["time_evaluate"] = time.perf_counter() - started
        self._report(task, "training", metrics=dice)

        started = time.perf_counter()
        result = self.trainer.train(task, base)
        timings["time_train"] = time.perf_counter() - started

        self._report(task, "sealing")
        started = time.perf_counter()
        change = delta(result.weights, base)
        norm: float | None = None
        if task.privacy.clip_norm is not None:
            change, norm = clip_update(change, task.privacy.clip_norm)
        payload = to_safetensors(change)
        timings["time_seal"] = time.perf_counter() - started  # delta, clip, serialise
        header = UpdateHeader(
            run_id=task.run_id,
            round=task.round,
            site=self.keys.site,
            base_weights_sha256=task.weights_sha256,
            num_samples=result.num_samples,
            metrics=_finite({**dice, "train_loss": result.loss, **timings}),
            created_at=datetime.now(UTC),
        )
        round_key = crypto.x25519_public_from_bytes(base64.b64decode(task.round_public_key))
        envelope = seal_update_payload(
            header, payload, round_key=round_key, site_key=self.keys.site_key
        )
        write_atomic(entry.header, canonical_json(header))
        write_atomic(entry.delta, payload)
        digests = {
            "run_id": task.run_id,
            "round": task.round,
            "upload_path": task.upload_path,
            "base_weights_sha256": task.weights_sha256,
            "delta_sha256": hashlib.sha256(payload).hexdigest(),
            "update_sha256": hashlib.sha256(envelope).hexdigest(),
            "num_samples": result.num_samples,
            "clip_norm": task.privacy.clip_norm,
            "delta_norm_before_clip": norm,
        }
        write_atomic(entry.digests, json.dumps(digests, indent=2).encode())
        write_atomic(entry.update, envelope)  # last: from here on this update is final
        return self._upload(task.run_id, task.round, task.upload_path, task, header.metrics)

    def _upload(
        self,
        run_id: str,
        round_number: int,
        path: str,
        task: Task | None,
        metrics: Mapping[str, float] | None = None,
    ) -> Outcome:
        entry = self.state.ledger(run_id, round_number)
        envelope = entry.update.read_bytes()
        if task is not None:
            self._report(task, "uploading")
        try:
            receipt = self.transport.upload(path, envelope)
        except Conflict as exc:
            if exc.code not in DROP_CODES:
                raise
            log.warning("round %s/%d: update dropped (%s)", run_id, round_number, exc)
            record = {"code": exc.code, "message": exc.message, "at": _now()}
            write_atomic(entry.dropped, json.dumps(record, indent=2).encode())
            return "dropped"
        expected = hashlib.sha256(envelope).hexdigest()
        if receipt.update_sha256 != expected:
            log.warning("round %s/%d: receipt names another sha256", run_id, round_number)
        write_atomic(entry.receipt, receipt.model_dump_json(indent=2).encode())
        if task is not None:
            self._report(task, "uploaded", metrics=metrics)
        log.info("round %s/%d: update accepted", run_id, round_number)
        return "uploaded"

    def flush_pending(self) -> int:
        """Re-send every sealed update the server has not acknowledged; count accepted ones."""
        sent = 0
        for run_id, round_number, entry in self.state.ledger_entries():
            if not entry.sealed or entry.settled:
                continue
            path = routes.UPDATES.format(run_id=run_id, round=round_number)
            try:
                recorded = json.loads(entry.digests.read_text())
                path = str(recorded.get("upload_path") or path)
            except (OSError, ValueError):
                pass
            try:
                if self._upload(run_id, round_number, path, None) == "uploaded":
                    sent += 1
            except Unavailable as exc:
                log.warning("pending update %s/%d not sent yet: %s", run_id, round_number, exc)
        return sent

    # --- the loop ----------------------------------------------------------------------

    def run(
        self,
        *,
        poll_wait: float = 20.0,
        exit_when_done: bool = False,
        idle_exit_s: float = 60.0,
        max_tasks: int | None = None,
    ) -> int:
        """Poll and work until told to stop; returns the process exit code.

        With ``exit_when_done`` it returns 0 once the server reports no active run
        after this process took part in one, or after ``idle_exit_s`` seconds in which
        no run was active at all.
        """
        participated = self.flush_pending() > 0
        idle_since = self.clock()
        failures = 0
        tasks = 0
        while max_tasks is None or tasks < max_tasks:
            try:
                poll = self.transport.poll(poll_wait)
            except (Unavailable, FedsegError) as exc:
                if isinstance(exc, AuthError):
                    raise
                if 400 <= exc.http_status < 500:  # an answer, not an accident: it would repeat
                    raise type(exc)(
                        f"the server refuses to poll for tasks: {exc.message}; retrying cannot "
                        "help: check --poll-wait and the server URL, then start again",
                        code=exc.code,
                    ) from None
                failures += 1
                log.warning("poll failed: %s", exc)
                self.sleep(min(60.0, 2.0**failures))
                continue
            if poll.task is not None:
                tasks += 1
                participated = True
                try:
                    self.run_task(poll.task)
                    failures = 0
                except KeyboardInterrupt:
                    # tell the dashboard, or it shows the last state (say downloading) forever
                    self._report(poll.task.task, "stopped", "the client was stopped; it resumes")
                    raise
                except AuthError:
                    raise
                except FedsegError as exc:
                    failures += 1
                    log.error("round failed: %s", exc)
                    self._report(poll.task.task, "error", str(exc))
                    self.sleep(min(60.0, 2.0**failures))
                idle_since = self.clock()
                continue
            failures = 0
            if poll.active_runs > 0:
                idle_since = self.clock()
            elif exit_when_done and (participated or self.clock() - idle_since >= idle_exit_s):
                return 0
            self.sleep(min(poll.retry_after_s, poll_wait))
        return 0


def _now() -> str:
    return datetime.now(UTC).isoformat()
