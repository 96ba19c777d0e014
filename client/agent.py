"""The site's agent: poll, decide, fetch and verify, evaluate, train, seal, record, upload.

The agent only dials out (through a `Transport`) and never touches the data itself
(a `Trainer` does), so it is tested with fakes of both.

Resume rule, the one promise that matters: once ``update.bin`` of a round exists in
the ledger, that round's update is final. A restart (after kill -9 anywhere) re-sends
exactly those bytes, which the server accepts idempotently; it never computes a
second, different update. Before ``update.bin`` exists nothing has left the site, so
the round is simply done again. A 409 for a closed round drops the update for good
(``dropped.json``) and the agent moves on.

Privacy rule: before anything is downloaded or trained the site's policy decides the
round (`client.privacy.round_privacy`). A declined round gets a signed decline, kept
in ``decline.json`` before it is sent (a restart re-sends the same one) and never
trained. A trained round's ε ledger entry is written (fsync'd) before its update is
sealed and rides in the update header; the ledger counts a round once, so a round
re-done or re-sent after kill -9 is never paid for twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.declines import DeclineRefused, send_decline, store_decline, stored_decline
from client.privacy.decision import Declined
from client.privacy.round_privacy import (
    decide_round,
    dp_sgd_plan,
    record_round,
    release,
    signed_decline,
    upload_weight,
)
from client.sealing import seal_round
from client.state import StateDir
from client.training.steps import TrainResult
from client.verification import check_receipt, open_base_model
from shared import crypto, routes
from shared.errors import (
    AuthError,
    Conflict,
    FedsegError,
    IntegrityError,
    Unavailable,
)
from shared.files import write_atomic
from shared.privacy import DeclineReceipt, SignedDecline
from shared.rotation import follow_rotations
from shared.schemas import (
    SignedKeyRotation,
    SignedTask,
    SiteState,
    StatusReport,
    Task,
    TaskPoll,
    UpdateReceipt,
)
from shared.tasks import verify_task
from shared.tensors import Tensors

if TYPE_CHECKING:
    from client.privacy.dp_sgd import DpSgdPlan

log = logging.getLogger(__name__)
progress = logging.getLogger("client.progress")

DROP_CODES = frozenset({"round_closed", "round_not_open", "stale_round", "update_conflict"})
Outcome = Literal["uploaded", "dropped", "pending", "declined"]


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

    def decline(self, path: str, signed: SignedDecline) -> DeclineReceipt:
        """POST a signed decline; raises `Conflict` when the round no longer takes it."""
        ...

    def key_rotations(self) -> list[SignedKeyRotation]:
        """The server's signed key-rotation statements."""
        ...


class Trainer(Protocol):
    """What the agent needs from local training (see `client.trainer.LocalTrainer`)."""

    def evaluate(self, task: Task, weights: Tensors) -> dict[str, float]:
        """Metrics of the received model on the site's validation split ({} when skipped)."""
        ...

    def train_cases(self, task: Task) -> int:
        """How many training cases the task's split leaves this site (for the policy)."""
        ...

    def train(
        self, task: Task, weights: Tensors, *, dp_sgd: DpSgdPlan | None = None
    ) -> TrainResult:
        """Train from ``weights`` as the task says, with DP-SGD when ``dp_sgd`` is given."""
        ...


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
        dest = self.state.bundle_path(task.run_id, task.round - 1)
        self.transport.download(task.bundle_path, dest)
        return open_base_model(dest, task, self.keys.server_key, self.keys.retired)

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
        stored = stored_decline(entry)
        if stored is not None:  # declined before a restart: the same decline again
            return self._decline(task, stored)
        decided = decide_round(self.state.root, task, train_cases=self.trainer.train_cases(task))
        decision = decided.decision
        if isinstance(decision, Declined):
            decline = signed_decline(
                task, decision, site=self.keys.site, site_key=self.keys.site_key
            )
            store_decline(entry, decline)
            return self._decline(task, decline)
        timings: dict[str, float] = {}
        self._report(task, "downloading")
        started = time.perf_counter()
        base = self.fetch_model(task)
        timings["time_download"] = time.perf_counter() - started
        progress.info(
            "round %d: downloaded and verified model v%d in %.1f s",
            task.round,
            task.round - 1,
            timings["time_download"],
        )

        self._report(task, "evaluating")
        started = time.perf_counter()
        scores = self.trainer.evaluate(task, base)
        timings["time_evaluate"] = time.perf_counter() - started
        self._report(task, "training", metrics=scores)

        started = time.perf_counter()
        result = self.trainer.train(task, base, dp_sgd=dp_sgd_plan(task.privacy, decision))
        timings["time_train"] = time.perf_counter() - started
        progress.info(
            "round %d: trained %d steps in %.1f s (loss %.4f)",
            task.round,
            result.steps,
            timings["time_train"],
            result.loss,
        )

        spent = record_round(decided.ledger, task, decision)  # paid before anything leaves
        if spent is not None:
            progress.info(
                "round %d: %s costs ε %.3g (run %.3g, δ=%g), recorded in the site's ledger",
                task.round,
                spent.mechanism,
                spent.epsilon,
                spent.cumulative_epsilon,
                spent.delta,
            )
        self._report(task, "sealing")
        header = seal_round(
            task=task,
            site=self.keys.site,
            site_key=self.keys.site_key,
            weights=result.weights,
            base=base,
            num_samples=upload_weight(task.privacy, result.num_samples),
            metrics={**scores, **_training_metrics(result, private=spent is not None), **timings},
            entry=entry,
            release=partial(release, privacy=task.privacy, quorum=task.quorum),
            privacy=spent,
        )
        progress.info(
            "round %d: sealed the update (%d bytes) in %.1f s",
            task.round,
            entry.update.stat().st_size,
            header.metrics["time_seal"],
        )
        return self._upload(task.run_id, task.round, task.upload_path, task, header.metrics)

    def _decline(self, task: Task, signed: SignedDecline) -> Outcome:
        entry = self.state.ledger(task.run_id, task.round)
        outcome = send_decline(self.transport, entry, signed, drop_codes=DROP_CODES)
        if outcome == "declined":
            decline = signed.decline
            self._report(task, "declined", f"{decline.reason}: {decline.message}")
        return outcome

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
        progress.info(
            "round %d: uploading the sealed update (%d bytes)", round_number, len(envelope)
        )
        started = time.perf_counter()
        try:
            receipt = self.transport.upload(path, envelope)
        except Conflict as exc:
            if exc.code not in DROP_CODES:
                raise
            log.warning("round %s/%d: update dropped (%s)", run_id, round_number, exc)
            record = {"code": exc.code, "message": exc.message, "at": _now()}
            write_atomic(entry.dropped, json.dumps(record, indent=2).encode())
            return "dropped"
        check_receipt(
            receipt, envelope, run_id=run_id, round_number=round_number, site=self.keys.site
        )
        write_atomic(entry.receipt, receipt.model_dump_json(indent=2).encode())
        if task is not None:
            self._report(task, "uploaded", metrics=metrics)
        progress.info(
            "round %d: update accepted (%s/%d, %d bytes in %.1f s, receipt sha256 %s…)",
            round_number,
            run_id,
            round_number,
            len(envelope),
            time.perf_counter() - started,
            receipt.update_sha256[:12],
        )
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
            except IntegrityError as exc:
                log.error("pending update %s/%d: %s", run_id, round_number, exc.message)
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
                except (AuthError, DeclineRefused):
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


def _training_metrics(result: TrainResult, *, private: bool) -> dict[str, float]:
    """The training loss, for plain rounds only.

    It is a statistic of the training cases that no mechanism noises, so a DP round
    does not send it past its ε.
    """
    return {} if private else {"train_loss": result.loss}


def _now() -> str:
    return datetime.now(UTC).isoformat()
