"""Agent semantics against a fake transport and a fake trainer: ledger, resume, closed rounds."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from client.agent import Agent, AgentKeys
from client.sealing import clip_update
from client.state import StateDir
from client.training import TrainResult
from shared import crypto, routes
from shared.bundle import bundle_tar, make_bundle
from shared.errors import BundleError, Conflict, IntegrityError, InvalidInput, Unavailable
from shared.privacy import DeclineReceipt, SignedDecline
from shared.schemas import (
    PlainPrivacy,
    PrivacyConfig,
    SignedKeyRotation,
    SignedTask,
    StatusReport,
    Task,
    TaskPoll,
    TrainingConfig,
    UpdateReceipt,
)
from shared.tasks import sign_task
from shared.tensors import Tensors, to_safetensors
from shared.updates import open_update

SITE = "site-a"


class Killed(BaseException):
    """Stands for kill -9: nothing after the raise point runs."""


class FakeServer:
    """In-memory server side: signs tasks, serves a bundle, takes uploads."""

    def __init__(self, tmp: Path, base: Tensors | None = None) -> None:
        self.signing_key = crypto.generate_signing_key()
        self.round_key = crypto.generate_sealing_key()
        self.base: Tensors = base or {"w": torch.randn(4, 3), "b": torch.zeros(3)}
        self.tars: dict[int, bytes] = {}
        for version in range(3):  # the same weights published as versions 0..2
            manifest, files = make_bundle(
                run_id="run1",
                version=version,
                model="segresnet-small",
                model_params={},
                weights=to_safetensors(self.base),
                signing_key=self.signing_key,
            )
            self.tars[version] = bundle_tar(files)
            self.weights_sha256 = manifest.weights_sha256
        self.polls: list[TaskPoll] = []
        self.uploads: list[tuple[str, bytes]] = []
        self.reports: list[StatusReport] = []
        self.declines: list[tuple[str, SignedDecline]] = []
        self.decline_error: Exception | None = None
        self.closed: set[int] = set()
        self.kill_on_upload = False
        self.receipt_sha256: str | None = None  # a lying server names another hash
        self.downloads = 0

    def task(
        self,
        round_number: int = 1,
        clip: float | None = None,
        *,
        privacy: PrivacyConfig | None = None,
        rounds: int = 2,
        quorum: int = 1,
    ) -> SignedTask:
        task = Task(
            run_id="run1",
            round=round_number,
            site=SITE,
            model="segresnet-small",
            model_params={},
            weights_sha256=self.weights_sha256,
            bundle_path=routes.MODEL_BUNDLE.format(run_id="run1", version=round_number - 1),
            upload_path=routes.UPDATES.format(run_id="run1", round=round_number),
            round_public_key=base64.b64encode(
                crypto.public_bytes(self.round_key.public_key())
            ).decode(),
            deadline=datetime.now(UTC) + timedelta(hours=1),
            training=TrainingConfig(),
            privacy=privacy or PlainPrivacy(clip_norm=clip),
            rounds=rounds,
            quorum=quorum,
            issued_at=datetime.now(UTC),
        )
        return sign_task(task, self.signing_key)

    # --- Transport protocol ---
    def poll(self, wait_s: float) -> TaskPoll:
        return self.polls.pop(0) if self.polls else TaskPoll(active_runs=0, retry_after_s=0)

    def download(self, path: str, dest: Path) -> Path:
        self.downloads += 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.tars[int(path.rstrip("/").split("/")[-2])])
        return dest

    def upload(self, path: str, envelope: bytes) -> UpdateReceipt:
        round_number = int(path.rstrip("/").split("/")[-2])
        if round_number in self.closed:
            raise Conflict("round 1 is closed", code="round_closed")
        self.uploads.append((path, envelope))
        if self.kill_on_upload:
            raise Killed
        return UpdateReceipt(
            run_id="run1",
            round=round_number,
            site=SITE,
            update_sha256=self.receipt_sha256 or crypto.sha256(envelope).hex(),
            received_at=datetime.now(UTC),
        )

    def report(self, status: StatusReport) -> None:
        self.reports.append(status)

    def decline(self, path: str, signed: SignedDecline) -> DeclineReceipt:
        self.declines.append((path, signed))
        if self.decline_error is not None:
            raise self.decline_error
        return DeclineReceipt(
            run_id=signed.decline.run_id,
            round=signed.decline.round,
            site=signed.decline.site,
            reason=signed.decline.reason,
            recorded_at=datetime.now(UTC),
        )

    def key_rotations(self) -> list[SignedKeyRotation]:
        return []  # this server never rotated its key


class FakeTrainer:
    """Each call gives different weights: a second computation would be visible."""

    def __init__(self, cases: int = 8) -> None:
        self.calls = 0
        self.cases = cases  # the default policy's min_cases: a plain round trains
        self.plans: list[object] = []

    def train_cases(self, task: Task) -> int:
        return self.cases

    def evaluate(self, task: Task, weights: Tensors) -> dict[str, float]:
        return {"dice_tc": 0.1, "dice_wt": 0.2, "dice_et": 0.3, "dice_mean": 0.2}

    def train(self, task: Task, weights: Tensors, *, dp_sgd: object = None) -> TrainResult:
        self.calls += 1
        self.plans.append(dp_sgd)
        new = {name: t + 0.01 * torch.randn_like(t) for name, t in weights.items()}
        return TrainResult(weights=new, num_samples=7, loss=0.5, steps=3, seconds=0.1)


def make_agent(server: FakeServer, state: StateDir, trainer: FakeTrainer | None = None) -> Agent:
    keys = AgentKeys(
        site=SITE,
        site_key=site_key(state),
        server_key=server.signing_key.public_key(),
    )
    return Agent(
        state=state,
        transport=server,
        trainer=trainer or FakeTrainer(),
        keys=keys,
        sleep=lambda s: None,
    )


def site_key(state: StateDir):
    if not state.site_key_path.exists():
        crypto.save_signing_key(crypto.generate_signing_key(), state.site_key_path)
    return state.load_site_key()


@pytest.fixture
def server(tmp_path: Path) -> FakeServer:
    return FakeServer(tmp_path)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def test_round_writes_the_ledger_and_uploads_what_it_records(server, state) -> None:
    agent = make_agent(server, state)
    assert agent.run_task(server.task()) == "uploaded"
    entry = state.ledger("run1", 1)
    ((path, sent),) = server.uploads
    assert path == "/api/v1/runs/run1/rounds/1/updates"
    assert entry.update.read_bytes() == sent
    header, change = open_update(
        sent, site_key=state.load_site_key().public_key(), round_key=server.round_key
    )
    assert (
        entry.header.read_bytes()
        == json.dumps(
            header.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()
    )
    assert header.num_samples == 7 and header.base_weights_sha256 == server.weights_sha256
    assert {"dice_tc", "dice_wt", "dice_et", "dice_mean", "train_loss"} <= set(header.metrics)
    assert {"time_download", "time_evaluate", "time_train", "time_seal"} <= set(header.metrics)
    assert set(change) == {"w", "b"} and float(change["w"].abs().sum()) > 0
    digests = json.loads(entry.digests.read_text())
    assert digests["update_sha256"] == crypto.sha256(sent).hex()
    assert json.loads(entry.receipt.read_text())["update_sha256"] == crypto.sha256(sent).hex()
    assert [r.state for r in server.reports] == [
        "downloading",
        "evaluating",
        "training",
        "sealing",
        "uploading",
        "uploaded",
    ]


def test_kill_between_seal_and_upload_resends_the_same_bytes(server, state) -> None:
    server.kill_on_upload = True
    trainer = FakeTrainer()
    with pytest.raises(Killed):
        make_agent(server, state, trainer).run_task(server.task())
    first = state.ledger("run1", 1).update.read_bytes()
    assert not state.ledger("run1", 1).receipt.exists()
    # a fresh process: the server offers the same round again
    server.kill_on_upload = False
    server.polls = [TaskPoll(task=server.task(), active_runs=1)]
    second_trainer = FakeTrainer()
    agent = make_agent(server, state, second_trainer)
    assert agent.run(poll_wait=0, exit_when_done=True, max_tasks=1) == 0
    assert second_trainer.calls == 0  # nothing recomputed
    # flushed at start, and re-sent when the round is offered again: always the same bytes
    assert len(server.uploads) == 3 and {envelope for _, envelope in server.uploads} == {first}
    assert state.ledger("run1", 1).receipt.exists()


def test_pending_update_is_flushed_at_start_without_a_task(server, state) -> None:
    server.kill_on_upload = True
    with pytest.raises(Killed):
        make_agent(server, state).run_task(server.task())
    server.kill_on_upload = False
    agent = make_agent(server, state)
    assert agent.run(poll_wait=0, exit_when_done=True, idle_exit_s=0) == 0
    assert len(server.uploads) == 2 and server.uploads[0] == server.uploads[1]
    assert state.ledger("run1", 1).receipt.exists()


def test_closed_round_is_dropped_and_never_retried(server, state) -> None:
    server.kill_on_upload = True
    with pytest.raises(Killed):
        make_agent(server, state).run_task(server.task(1))
    server.kill_on_upload = False
    server.closed.add(1)
    server.uploads.clear()
    server.polls = [TaskPoll(task=server.task(2), active_runs=1)]
    trainer = FakeTrainer()
    agent = make_agent(server, state, trainer)
    assert agent.run(poll_wait=0, exit_when_done=True) == 0
    entry = state.ledger("run1", 1)
    assert json.loads(entry.dropped.read_text())["code"] == "round_closed"
    assert [p for p, _ in server.uploads] == ["/api/v1/runs/run1/rounds/2/updates"]
    assert trainer.calls == 1
    # a later start does not try the dropped round again
    server.uploads.clear()
    make_agent(server, state).run(poll_wait=0, exit_when_done=True, idle_exit_s=0)
    assert server.uploads == []


def test_task_signed_by_another_key_is_refused(server, state) -> None:
    other = crypto.generate_signing_key()
    forged = sign_task(server.task().task, other)
    with pytest.raises(IntegrityError):
        make_agent(server, state).run_task(forged)
    assert server.downloads == 0 and server.uploads == []


def test_bundle_that_is_not_the_tasks_model_is_refused_and_deleted(server, state) -> None:
    signed = server.task()
    task = signed.task.model_copy(update={"weights_sha256": "0" * 64})
    with pytest.raises(BundleError):
        make_agent(server, state).run_task(sign_task(task, server.signing_key))
    assert not state.bundle_path("run1", 0).exists() and server.uploads == []


def test_clipping_bounds_the_update_norm(server, state) -> None:
    agent = make_agent(server, state)
    agent.run_task(server.task(clip=0.001))
    _, change = open_update(
        server.uploads[0][1],
        site_key=state.load_site_key().public_key(),
        round_key=server.round_key,
    )
    norm = torch.sqrt(sum(t.double().square().sum() for t in change.values()))
    assert float(norm) == pytest.approx(0.001, rel=1e-4)
    digests = json.loads(state.ledger("run1", 1).digests.read_text())
    assert digests["delta_norm_before_clip"] > 0.001
    small = {"x": torch.full((4,), 1e-6)}
    assert clip_update(small, 1.0)[0] is small


def test_exit_when_done_waits_while_a_run_is_active(server, state) -> None:
    now = [0.0]
    agent = make_agent(server, state)
    agent.clock = lambda: now[0]

    def sleep(seconds: float) -> None:
        now[0] += 1.0

    agent.sleep = sleep
    server.polls = [TaskPoll(active_runs=1, retry_after_s=1)] * 5
    assert agent.run(poll_wait=1, exit_when_done=True, idle_exit_s=3) == 0
    assert server.polls == []  # it waited for the active run, then exited after idling
    assert now[0] >= 7  # idle for idle_exit_s after the last active poll


def test_a_stopped_client_reports_stopped_instead_of_its_last_state(server, state) -> None:
    class InterruptedTrainer(FakeTrainer):
        def train(self, task: Task, weights: Tensors, *, dp_sgd: object = None) -> TrainResult:
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM from docker stop

    server.polls = [TaskPoll(task=server.task(), active_runs=1)]
    with pytest.raises(KeyboardInterrupt):
        make_agent(server, state, InterruptedTrainer()).run(poll_wait=0, max_tasks=1)
    assert [r.state for r in server.reports][-2:] == ["training", "stopped"]


@pytest.mark.parametrize("exit_when_done", [True, False])
def test_a_poll_refused_with_a_4xx_stops_the_agent_naming_the_flag(
    server, state, exit_when_done: bool
) -> None:
    agent = make_agent(server, state)
    calls = []

    def refused(wait_s: float) -> TaskPoll:
        calls.append(wait_s)
        if len(calls) > 3:  # the old agent retried forever: end it here
            raise RuntimeError("the agent polled again after a 4xx")
        raise InvalidInput("wait must be between 0 and 30.0 seconds")

    server.poll = refused  # type: ignore[method-assign]
    with pytest.raises(InvalidInput, match="--poll-wait") as raised:
        agent.run(poll_wait=300, exit_when_done=exit_when_done, idle_exit_s=0)
    assert raised.value.code == "invalid_input" and len(calls) == 1


def test_a_transient_poll_failure_is_retried(server, state) -> None:
    agent = make_agent(server, state)
    answers: list[TaskPoll | Exception] = [Unavailable("restarting"), TaskPoll(active_runs=0)]

    def flaky(wait_s: float) -> TaskPoll:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    server.poll = flaky  # type: ignore[method-assign]
    assert agent.run(poll_wait=1, exit_when_done=True, idle_exit_s=0) == 0
    assert answers == []


def test_a_receipt_for_other_bytes_fails_closed(server, state) -> None:
    """Defect: a receipt naming another sha256 was saved as accepted (only logged)."""
    server.receipt_sha256 = "0" * 64
    with pytest.raises(IntegrityError) as caught:
        make_agent(server, state).run_task(server.task())
    assert caught.value.code == "hash_mismatch"
    entry = state.ledger("run1", 1)
    assert entry.sealed and not entry.receipt.exists() and not entry.settled
    # the pending update is re-sent later and recorded once the receipt is right
    server.receipt_sha256 = None
    assert make_agent(server, state).flush_pending() == 1
    assert entry.receipt.exists()


def test_a_lying_receipt_never_stops_the_flush(server, state) -> None:
    server.kill_on_upload = True
    with pytest.raises(Killed):
        make_agent(server, state).run_task(server.task())
    server.kill_on_upload = False
    server.receipt_sha256 = "f" * 64
    assert make_agent(server, state).flush_pending() == 0
    assert not state.ledger("run1", 1).receipt.exists()


def test_one_info_line_per_phase(server, state, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="client.progress")
    assert make_agent(server, state).run_task(server.task()) == "uploaded"
    lines = [r.message for r in caplog.records if r.name == "client.progress"]
    phases = ["downloaded and verified", "trained 3 steps", "sealed", "uploading", "accepted"]
    assert [next(i for i, line in enumerate(lines) if p in line) for p in phases] == sorted(
        next(i for i, line in enumerate(lines) if p in line) for p in phases
    )
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "client.progress")
