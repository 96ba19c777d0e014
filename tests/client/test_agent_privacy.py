"""The agent's privacy paths against the fake transport: decide, decline, train with DP, ledger."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from client.declines import DeclineRefused
from client.privacy.accountant import Spend, gaussian_epsilon
from client.privacy.dp_sgd import DpSgdPlan
from client.privacy.ledger import EpsilonLedger
from client.privacy.policy import SitePolicy, save_policy
from client.state import StateDir
from shared import routes
from shared.errors import Conflict, NotFound
from shared.privacy import verify_decline
from shared.schemas import (
    DpFedAvgPrivacy,
    DpSgdPrivacy,
    SvtPrivacy,
    TaskPoll,
    UpdateHeader,
)
from shared.tensors import Tensors
from shared.updates import open_update
from tests.client.test_agent import FakeServer, FakeTrainer, Killed, make_agent

DP_ONLY = SitePolicy(allow_plain=False, min_cases=2)
FEDAVG = DpFedAvgPrivacy(clip_norm=0.001, noise_multiplier=1e-6)


@pytest.fixture
def server(tmp_path: Path) -> FakeServer:
    return FakeServer(tmp_path)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def opened(server: FakeServer, state: StateDir, index: int = 0) -> tuple[UpdateHeader, Tensors]:
    return open_update(
        server.uploads[index][1],
        site_key=state.load_site_key().public_key(),
        round_key=server.round_key,
    )


def norm(change: Tensors) -> float:
    return float(torch.sqrt(sum(t.double().square().sum() for t in change.values())))


# --- declines ------------------------------------------------------------------------------


def test_a_plain_round_against_a_dp_only_policy_is_declined_signed_and_reported(
    server, state, caplog
) -> None:
    save_policy(state.root, DP_ONLY)
    trainer = FakeTrainer()
    caplog.set_level(logging.WARNING)
    assert make_agent(server, state, trainer).run_task(server.task()) == "declined"
    assert trainer.calls == 0 and server.downloads == 0 and server.uploads == []
    ((path, signed),) = server.declines
    assert path == routes.DECLINE.format(run_id="run1", round=1)
    decline = verify_decline(signed, state.load_site_key().public_key())
    assert (decline.run_id, decline.round, decline.site) == ("run1", 1, "site-a")
    assert decline.reason == "policy_mechanism"
    report = server.reports[-1]
    assert report.state == "declined" and report.message.startswith("policy_mechanism: ")
    entry = state.ledger("run1", 1)
    assert entry.decline.is_file() and entry.decline_receipt.is_file() and not entry.sealed
    lines = [r.message for r in caplog.records if "declined (policy_mechanism)" in r.message]
    assert len(lines) == 1
    assert EpsilonLedger(state.root).entries() == []


def test_the_default_policy_declines_a_site_with_too_few_cases(server, state) -> None:
    trainer = FakeTrainer(cases=7)  # the default policy wants 8
    assert make_agent(server, state, trainer).run_task(server.task()) == "declined"
    assert server.declines[0][1].decline.reason == "too_few_cases"
    assert trainer.calls == 0


def test_a_policy_from_the_environment_wins_over_the_state_dir(server, state, monkeypatch) -> None:
    save_policy(state.root, DP_ONLY)
    monkeypatch.setenv("FEDSEG_PRIVACY_POLICY", json.dumps({"min_cases": 2}))
    assert make_agent(server, state, FakeTrainer(cases=2)).run_task(server.task()) == "uploaded"
    assert server.declines == []


def test_a_restart_re_sends_the_same_decline_and_never_trains_the_round(server, state) -> None:
    save_policy(state.root, DP_ONLY)
    make_agent(server, state).run_task(server.task())
    save_policy(state.root, SitePolicy(min_cases=2))  # even if the policy changes meanwhile
    trainer = FakeTrainer()
    assert make_agent(server, state, trainer).run_task(server.task()) == "declined"
    first, second = (signed for _, signed in server.declines)
    assert first == second and trainer.calls == 0 and server.uploads == []


def test_decline_conflict_is_logged_and_the_agent_moves_on(server, state, caplog) -> None:
    save_policy(state.root, DP_ONLY)
    server.decline_error = Conflict("another decline is recorded", code="decline_conflict")
    server.polls = [
        TaskPoll(task=server.task(1), active_runs=1),
        TaskPoll(task=server.task(2), active_runs=1),
    ]
    caplog.set_level(logging.WARNING)
    assert make_agent(server, state).run(poll_wait=0, exit_when_done=True) == 0
    assert [signed.decline.round for _, signed in server.declines] == [1, 2]
    assert "already holds another decline" in caplog.text
    assert [r.state for r in server.reports] == ["declined", "declined"]


def test_a_decline_the_server_refuses_with_a_4xx_stops_the_agent(server, state) -> None:
    save_policy(state.root, DP_ONLY)
    server.decline_error = NotFound("no such route")
    server.polls = [TaskPoll(task=server.task(1), active_runs=1)] * 3
    with pytest.raises(DeclineRefused, match="retrying cannot help") as raised:
        make_agent(server, state).run(poll_wait=0, exit_when_done=True)
    assert raised.value.code == "not_found" and len(server.declines) == 1


def test_a_decline_for_a_closed_round_is_dropped(server, state) -> None:
    save_policy(state.root, DP_ONLY)
    server.decline_error = Conflict("round 1 is closed", code="round_closed")
    assert make_agent(server, state).run_task(server.task()) == "dropped"
    assert json.loads(state.ledger("run1", 1).dropped.read_text())["code"] == "round_closed"


def test_the_budget_stop_declines_before_the_round_that_would_exceed(server, state) -> None:
    privacy = DpFedAvgPrivacy(clip_norm=1.0, noise_multiplier=2.0)
    one_round = gaussian_epsilon(
        [Spend("dp_fedavg", noise_multiplier=2.0, sample_rate=1.0, steps=1)], delta=1e-5
    )
    two_rounds = gaussian_epsilon(
        [Spend("dp_fedavg", noise_multiplier=2.0, sample_rate=1.0, steps=2)], delta=1e-5
    )
    budget = (one_round + two_rounds) / 2  # room for one round, not for two
    save_policy(state.root, SitePolicy(max_epsilon=budget, allow_plain=False, min_cases=2))
    agent = make_agent(server, state)
    assert agent.run_task(server.task(1, privacy=privacy)) == "uploaded"
    assert agent.run_task(server.task(2, privacy=privacy)) == "declined"
    decline = server.declines[0][1].decline
    assert decline.reason == "budget_exhausted" and decline.round == 2
    assert decline.cumulative_epsilon == pytest.approx(one_round, rel=1e-6)
    assert [e.round for e in EpsilonLedger(state.root).entries()] == [1]
    assert len(server.uploads) == 1


# --- training with a mechanism -----------------------------------------------------------------


def test_dp_fedavg_clips_adds_noise_weights_equally_and_carries_the_ledger_entry(
    server, state
) -> None:
    save_policy(state.root, DP_ONLY)
    assert make_agent(server, state).run_task(server.task(privacy=FEDAVG)) == "uploaded"
    header, change = opened(server, state)
    (entry,) = EpsilonLedger(state.root).entries()
    assert header.privacy == entry
    assert (entry.mechanism, entry.round, entry.noise_multiplier, entry.clip) == (
        "dp_fedavg",
        1,
        1e-6,
        0.001,
    )
    assert entry.sample_rate == 1.0 and entry.steps == 1 and entry.epsilon > 0
    assert header.num_samples == 1  # equal weights, as the accounting assumes
    assert "train_loss" not in header.metrics  # a training statistic outside the ε
    assert norm(change) == pytest.approx(0.001, rel=1e-3)
    digests = json.loads(state.ledger("run1", 1).digests.read_text())
    assert digests["mechanism"] == "dp_fedavg" and digests["delta_norm_before_clip"] > 0.001


def test_dp_fedavg_noise_is_the_sites_share_of_sigma_c(tmp_path, state) -> None:
    save_policy(state.root, DP_ONLY)
    server = FakeServer(tmp_path, base={"w": torch.zeros(200, 100)})  # std is measurable
    noisy = DpFedAvgPrivacy(clip_norm=0.5, noise_multiplier=2.0)
    trainer = FakeTrainer()
    agent = make_agent(server, state, trainer)
    agent.run_task(server.task(privacy=noisy, quorum=4))
    _, change = opened(server, state)
    values = torch.cat([t.double().reshape(-1) for t in change.values()])
    # σ·C/√m = 2 · 0.5 / 2; the clipped delta (norm ≤ 0.5 over 20 000 values) is negligible
    assert float(values.std()) == pytest.approx(0.5, rel=0.05)


def test_dp_sgd_hands_the_trainer_the_priced_plan(server, state) -> None:
    save_policy(state.root, DP_ONLY)
    trainer = FakeTrainer(cases=4)
    privacy = DpSgdPrivacy(noise_multiplier=1.3, max_grad_norm=0.7)
    assert make_agent(server, state, trainer).run_task(server.task(privacy=privacy)) == "uploaded"
    (plan,) = trainer.plans
    assert isinstance(plan, DpSgdPlan)
    batch, steps = 2, 20  # TrainingConfig's defaults
    assert (plan.noise_multiplier, plan.max_grad_norm, plan.sample_rate) == (1.3, 0.7, batch / 4)
    assert plan.seed is None  # the noise comes from the OS, never a replayable seed
    header, _ = opened(server, state)
    assert header.privacy is not None and header.privacy.steps == steps
    expected = gaussian_epsilon(
        [Spend("dp_sgd", noise_multiplier=1.3, sample_rate=batch / 4, steps=steps)], delta=1e-5
    )
    assert header.privacy.epsilon == pytest.approx(expected)
    assert header.num_samples == 7  # dp_sgd keeps FedAvg's sample weight


def test_a_plain_round_hands_the_trainer_no_plan_and_records_nothing(server, state) -> None:
    trainer = FakeTrainer()
    make_agent(server, state, trainer).run_task(server.task())
    assert trainer.plans == [None] and EpsilonLedger(state.root).entries() == []
    header, _ = opened(server, state)
    assert header.privacy is None


def test_svt_shares_at_most_its_fraction_and_costs_its_pure_epsilon(server, state) -> None:
    save_policy(state.root, DP_ONLY)
    privacy = SvtPrivacy(fraction=0.2, epsilon=3.0, threshold=0.0, clip=0.05)
    make_agent(server, state).run_task(server.task(privacy=privacy))
    header, change = opened(server, state)
    values = torch.cat([t.reshape(-1) for t in change.values()])
    assert int((values != 0).sum()) <= int(0.2 * values.numel())
    assert float(values.abs().max()) <= 0.05 * (1 + 1e-6)  # float32 of ±γ
    assert header.privacy is not None
    assert (header.privacy.accountant, header.privacy.epsilon) == ("pure", 3.0)


# --- kill -9 -------------------------------------------------------------------------------------


def test_kill_after_the_ledger_before_the_upload_re_sends_and_counts_the_round_once(
    server, state
) -> None:
    save_policy(state.root, DP_ONLY)
    server.kill_on_upload = True
    with pytest.raises(Killed):
        make_agent(server, state).run_task(server.task(privacy=FEDAVG))
    (spent,) = EpsilonLedger(state.root).entries()
    first = state.ledger("run1", 1).update.read_bytes()
    server.kill_on_upload = False
    server.polls = [TaskPoll(task=server.task(privacy=FEDAVG), active_runs=1)]
    trainer = FakeTrainer()
    assert make_agent(server, state, trainer).run(poll_wait=0, exit_when_done=True) == 0
    assert trainer.calls == 0
    assert {envelope for _, envelope in server.uploads} == {first}
    assert EpsilonLedger(state.root).entries() == [spent]
    assert opened(server, state, -1)[0].privacy == spent


def test_kill_after_the_ledger_before_sealing_trains_again_without_a_second_charge(
    server, state, monkeypatch
) -> None:
    save_policy(state.root, DP_ONLY)

    def killed(**kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr("client.agent.seal_round", killed)
    with pytest.raises(Killed):
        make_agent(server, state).run_task(server.task(privacy=FEDAVG))
    (spent,) = EpsilonLedger(state.root).entries()
    assert not state.ledger("run1", 1).update.exists()  # nothing left the site
    monkeypatch.undo()
    trainer = FakeTrainer()
    assert make_agent(server, state, trainer).run_task(server.task(privacy=FEDAVG)) == "uploaded"
    assert trainer.calls == 1
    assert EpsilonLedger(state.root).entries() == [spent]
    assert opened(server, state)[0].privacy == spent
