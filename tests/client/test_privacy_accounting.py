"""Accountant, ε ledger and the site's decision: Opacus' numbers, once per round, before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from client.privacy.accountant import Spend, gaussian_epsilon, noise_for_target, total_epsilon
from client.privacy.decision import Declined, LocalFacts, Train, decide
from client.privacy.ledger import EpsilonLedger
from client.privacy.policy import SitePolicy
from shared.errors import ConfigError
from shared.schemas import DpFedAvgPrivacy, DpSgdPrivacy, PlainPrivacy, SvtPrivacy

DELTA = 1e-5


def sgd(sigma: float = 1.1, rate: float = 0.25, steps: int = 20) -> Spend:
    return Spend(
        mechanism="dp_sgd", noise_multiplier=sigma, sample_rate=rate, steps=steps, clip=1.0
    )


def facts(round_number: int = 1, **changes: int | str) -> LocalFacts:
    values: dict[str, int | str] = {
        "run_id": "run-1",
        "round": round_number,
        "train_cases": 16,
        "batch_size": 4,
        "local_steps": 10,
        "rounds": 5,
        "min_sites": 2,
    }
    values.update(changes)
    return LocalFacts(**values)  # type: ignore[arg-type]


# --- the accountant ---------------------------------------------------------------------


def test_gaussian_epsilon_equals_opacus_rdp_step_by_step() -> None:
    opacus = RDPAccountant()
    for _ in range(3):  # three rounds of 20 steps, fed to Opacus one step at a time
        for _ in range(20):
            opacus.step(noise_multiplier=1.1, sample_rate=0.25)
    ours = gaussian_epsilon([sgd(), sgd(), sgd()], delta=DELTA)
    assert ours == pytest.approx(opacus.get_epsilon(delta=DELTA), rel=1e-9)
    assert 1.0 < ours < 100.0  # a real, finite figure at these settings


def test_prv_is_used_where_it_answers_and_stays_below_rdp() -> None:
    history = [sgd(sigma=1.0, rate=0.05, steps=200)]
    prv = gaussian_epsilon(history, delta=DELTA, accountant="prv")
    rdp = gaussian_epsilon(history, delta=DELTA, accountant="rdp")
    assert 0 < prv <= rdp * 1.01


def test_epsilon_never_decreases_over_rounds() -> None:
    mixed = [
        sgd(),
        Spend(mechanism="svt", pure_epsilon=0.5, steps=1),
        Spend(mechanism="dp_fedavg", noise_multiplier=2.0, sample_rate=1.0, steps=1, clip=1.0),
    ]
    figures = [total_epsilon(mixed[: i + 1] * 2, delta=DELTA) for i in range(len(mixed))]
    running = [total_epsilon([sgd()] * n, delta=DELTA) for n in range(1, 8)]
    assert running == sorted(running) and len(set(running)) == len(running)
    assert figures == sorted(figures)


def test_pure_epsilon_adds_up() -> None:
    rounds = [Spend(mechanism="svt", pure_epsilon=0.3, steps=1)] * 4
    assert total_epsilon(rounds, delta=DELTA) == pytest.approx(1.2)


def test_noise_for_target_is_opacus_get_noise_multiplier() -> None:
    ours = noise_for_target(target_epsilon=3.0, delta=DELTA, sample_rate=0.25, steps=100)
    theirs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.25, steps=100
    )
    assert ours == theirs
    assert gaussian_epsilon([sgd(sigma=ours, steps=100)], delta=DELTA) <= 3.0


def test_a_spend_is_either_gaussian_or_pure() -> None:
    with pytest.raises(ValueError):
        Spend(mechanism="svt")
    with pytest.raises(ValueError):
        Spend(mechanism="dp_sgd", noise_multiplier=1.0, sample_rate=0.0, steps=1)


# --- the ledger -------------------------------------------------------------------------


def test_the_ledger_counts_a_round_once_and_persists(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    first = ledger.record("run-1", 1, sgd(), delta=DELTA)
    again = ledger.record("run-1", 1, sgd(sigma=0.5), delta=DELTA)  # a re-done round
    assert again == first
    second = ledger.record("run-1", 2, sgd(), delta=DELTA)
    assert second.cumulative_epsilon > first.cumulative_epsilon
    assert second.epsilon == pytest.approx(second.cumulative_epsilon - first.cumulative_epsilon)
    reopened = EpsilonLedger(tmp_path)
    assert [(e.run_id, e.round) for e in reopened.entries()] == [("run-1", 1), ("run-1", 2)]
    assert reopened.spent(delta=DELTA) == pytest.approx(second.cumulative_epsilon)
    assert first.cumulative_epsilon == pytest.approx(gaussian_epsilon([sgd()], delta=DELTA))


def test_runs_have_their_own_cumulative_but_share_the_sites_budget(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    a = ledger.record("run-a", 1, sgd(), delta=DELTA)
    b = ledger.record("run-b", 1, sgd(), delta=DELTA)
    assert b.cumulative_epsilon == pytest.approx(a.cumulative_epsilon)
    assert ledger.spent(delta=DELTA) > b.cumulative_epsilon


_CHILD = """
import os, signal, sys
from pathlib import Path
from client.privacy.accountant import Spend
from client.privacy.ledger import EpsilonLedger
spend = Spend(mechanism="dp_sgd", noise_multiplier=1.1, sample_rate=0.25, steps=20)
EpsilonLedger(Path(sys.argv[1])).record("run-1", 1, spend, delta=1e-5)
os.kill(os.getpid(), signal.SIGKILL)  # spent, then killed before anything else happens
"""


def test_a_round_spent_before_kill_9_is_not_spent_again(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], env=env, check=False)
    assert child.returncode == -signal.SIGKILL
    ledger = EpsilonLedger(tmp_path)
    before = ledger.entries()
    assert len(before) == 1
    ledger.record("run-1", 1, sgd(), delta=DELTA)  # the restarted agent re-does round 1
    assert ledger.entries() == before
    assert not list(tmp_path.glob("privacy/.*.tmp"))


def test_a_damaged_ledger_stops_the_site_with_a_clear_message(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_text('{"entries": [{"run_id": ')
    with pytest.raises(ConfigError, match="restore it"):
        ledger.entries()


# --- the decision -----------------------------------------------------------------------


def test_the_site_policy_wins_over_the_run(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    dp_only = SitePolicy(allow_plain=False, max_epsilon=8.0)
    decision = decide(dp_only, PlainPrivacy(), facts(), ledger)
    assert isinstance(decision, Declined) and decision.reason == "policy_mechanism"
    sgd_only = SitePolicy(mechanisms=("dp_sgd",))
    svt = SvtPrivacy(epsilon=1.0)
    decision = decide(sgd_only, svt, facts(), ledger)
    assert isinstance(decision, Declined) and decision.reason == "policy_mechanism"
    assert "svt" in decision.message
    assert isinstance(decide(SitePolicy(), PlainPrivacy(), facts(), ledger), Train)


@pytest.mark.parametrize(
    ("policy", "changes", "reason"),
    [
        (SitePolicy(), {"train_cases": 7}, "too_few_cases"),
        (SitePolicy(min_batch=4), {"batch_size": 2}, "batch_too_small"),
        (SitePolicy(min_local_steps=20), {"local_steps": 10}, "too_few_steps"),
    ],
)
def test_local_limits_decline_with_their_reason(
    tmp_path: Path, policy: SitePolicy, changes: dict[str, int], reason: str
) -> None:
    decision = decide(policy, PlainPrivacy(), facts(**changes), EpsilonLedger(tmp_path))
    assert isinstance(decision, Declined) and decision.reason == reason


def test_the_budget_stop_fires_before_the_round_that_would_exceed(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    privacy = DpSgdPrivacy(noise_multiplier=1.1)
    one_round = gaussian_epsilon([sgd(rate=4 / 16, steps=10)], delta=DELTA)
    three_rounds = gaussian_epsilon([sgd(rate=4 / 16, steps=10)] * 3, delta=DELTA)
    four_rounds = gaussian_epsilon([sgd(rate=4 / 16, steps=10)] * 4, delta=DELTA)
    policy = SitePolicy(allow_plain=False, max_epsilon=(three_rounds + four_rounds) / 2)
    trained = []
    for round_number in range(1, 7):
        decision = decide(policy, privacy, facts(round_number), ledger)
        if isinstance(decision, Declined):
            assert decision.reason == "budget_exhausted"
            assert decision.cumulative_epsilon == pytest.approx(three_rounds)
            break
        assert isinstance(decision, Train) and decision.spend is not None
        assert decision.projection is not None
        assert decision.projection.site_epsilon <= policy.max_epsilon  # type: ignore[operator]
        ledger.record("run-1", round_number, decision.spend, delta=decision.delta)
        trained.append(round_number)
    assert trained == [1, 2, 3]
    assert ledger.spent(delta=DELTA) == pytest.approx(three_rounds)
    assert ledger.spent(delta=DELTA) <= policy.max_epsilon  # never spent past it
    assert one_round < three_rounds < four_rounds


def test_the_runs_own_budget_declines_too(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    privacy = SvtPrivacy(epsilon=1.0, max_epsilon=2.5)
    reasons = []
    for round_number in range(1, 5):
        decision = decide(SitePolicy(), privacy, facts(round_number), ledger)
        if isinstance(decision, Train):
            assert decision.spend is not None
            ledger.record("run-1", round_number, decision.spend, delta=decision.delta)
        else:
            reasons.append(decision.reason)
    assert reasons == ["run_budget_exhausted", "run_budget_exhausted"]
    assert ledger.spent(delta=DELTA) == pytest.approx(2.0)


def test_a_recorded_round_is_trained_again_without_a_second_charge(tmp_path: Path) -> None:
    ledger = EpsilonLedger(tmp_path)
    privacy = SvtPrivacy(epsilon=1.0)
    policy = SitePolicy(allow_plain=False, max_epsilon=1.0)
    decision = decide(policy, privacy, facts(1), ledger)
    assert isinstance(decision, Train) and decision.spend is not None
    ledger.record("run-1", 1, decision.spend, delta=decision.delta)
    again = decide(policy, privacy, facts(1), ledger)  # restart after kill -9
    assert isinstance(again, Train) and again.projection is not None
    assert again.projection.epsilon == 0.0
    assert isinstance(decide(policy, privacy, facts(2), ledger), Declined)


def test_target_epsilon_becomes_opacus_noise_over_the_runs_steps(tmp_path: Path) -> None:
    decision = decide(
        SitePolicy(), DpSgdPrivacy(target_epsilon=3.0), facts(), EpsilonLedger(tmp_path)
    )
    assert isinstance(decision, Train) and decision.spend is not None
    expected = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=4 / 16, steps=5 * 10
    )
    assert decision.spend.noise_multiplier == expected
    five = gaussian_epsilon([decision.spend] * 5, delta=DELTA)
    assert five <= 3.0


def test_an_unreachable_target_is_declined(tmp_path: Path) -> None:
    decision = decide(
        SitePolicy(),
        DpSgdPrivacy(target_epsilon=1e-9),
        facts(train_cases=8, batch_size=8, local_steps=1000, rounds=1000),
        EpsilonLedger(tmp_path),
    )
    assert isinstance(decision, Declined) and decision.reason == "noise_too_low"


def test_dp_fedavg_is_one_full_participation_step_per_round(tmp_path: Path) -> None:
    privacy = DpFedAvgPrivacy(clip_norm=0.5, noise_multiplier=1.0)
    decision = decide(SitePolicy(), privacy, facts(), EpsilonLedger(tmp_path))
    assert isinstance(decision, Train) and decision.spend is not None
    assert (decision.spend.sample_rate, decision.spend.steps) == (1.0, 1)
    assert decision.spend.clip == 0.5


def test_the_stricter_delta_is_used(tmp_path: Path) -> None:
    policy = SitePolicy(delta=1e-6)
    decision = decide(
        policy, DpSgdPrivacy(noise_multiplier=1.0, delta=1e-5), facts(), EpsilonLedger(tmp_path)
    )
    assert isinstance(decision, Train) and decision.delta == 1e-6
    decision = decide(
        SitePolicy(),
        DpSgdPrivacy(noise_multiplier=1.0, delta=1e-7),
        facts(),
        EpsilonLedger(tmp_path),
    )
    assert isinstance(decision, Train) and decision.delta == 1e-7
    assert json.loads(policy.model_dump_json())["delta"] == 1e-6
