"""Will the site train this round? A pure function of policy, run, local facts and ledger.

`decide` runs before any training, so a round that would take the site past its
budget is declined *before* its ε is spent, never noticed after. The order of the
checks is the order a hospital would ask them: is the mechanism allowed, is there
enough data, is the batch and the training long enough, and can the budget pay for
it. A round the ledger already holds is trained again without a second charge (the
agent re-sends its sealed update anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from client.privacy.accountant import Spend, noise_for_target
from client.privacy.ledger import EpsilonLedger, Projection
from client.privacy.policy import SitePolicy
from shared.privacy import DeclineReason
from shared.schemas import DpFedAvgPrivacy, DpSgdPrivacy, PrivacyConfig, SvtPrivacy


@dataclass(frozen=True, slots=True)
class LocalFacts:
    """What the site knows about the round: its data and the run's shape."""

    run_id: str
    round: int
    train_cases: int
    batch_size: int
    local_steps: int
    rounds: int
    min_sites: int


@dataclass(frozen=True, slots=True)
class Train:
    """Train this round: with ``spend`` (None for a plain round) accounted at ``delta``."""

    spend: Spend | None
    delta: float
    projection: Projection | None


@dataclass(frozen=True, slots=True)
class Declined:
    """Do not train this round; ``reason`` is the stable code sent in the signed decline."""

    reason: DeclineReason
    message: str
    cumulative_epsilon: float | None = None


Decision = Train | Declined


def effective_delta(policy: SitePolicy, privacy: PrivacyConfig) -> float:
    """The stricter of the site's δ and the run's."""
    return min(policy.delta, privacy.delta if privacy.delta is not None else policy.delta)


def plan_spend(privacy: PrivacyConfig, facts: LocalFacts, *, delta: float) -> Spend | None:
    """The accountant's inputs this round would need (None for a plain round).

    Raises ``ValueError`` when dp_sgd's ``target_epsilon`` cannot be reached.
    """
    if isinstance(privacy, DpSgdPrivacy):
        rate = min(1.0, facts.batch_size / facts.train_cases)
        sigma = privacy.noise_multiplier or noise_for_target(
            target_epsilon=float(privacy.target_epsilon or 0.0),
            delta=delta,
            sample_rate=rate,
            steps=facts.rounds * facts.local_steps,
        )
        return Spend(
            mechanism="dp_sgd",
            noise_multiplier=sigma,
            sample_rate=rate,
            steps=facts.local_steps,
            clip=privacy.max_grad_norm,
        )
    if isinstance(privacy, DpFedAvgPrivacy):
        return Spend(
            mechanism="dp_fedavg",
            noise_multiplier=privacy.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            clip=privacy.clip_norm,
        )
    if isinstance(privacy, SvtPrivacy):
        return Spend(mechanism="svt", pure_epsilon=privacy.epsilon, steps=1, clip=privacy.clip)
    return None


def decide(
    policy: SitePolicy, privacy: PrivacyConfig, facts: LocalFacts, ledger: EpsilonLedger
) -> Decision:
    """Train or decline, the site's policy winning over whatever the run asks."""
    mechanism = privacy.mechanism
    if mechanism == "none" and not policy.allow_plain:
        return Declined("policy_mechanism", "the site's policy allows no plain (non-DP) rounds")
    if mechanism != "none" and mechanism not in policy.mechanisms:
        allowed = ", ".join(policy.mechanisms) or "none"
        return Declined("policy_mechanism", f"{mechanism} is not allowed here (allowed: {allowed})")
    if facts.train_cases < policy.min_cases:
        return Declined(
            "too_few_cases", f"{facts.train_cases} training cases, policy needs {policy.min_cases}"
        )
    if facts.batch_size < policy.min_batch:
        return Declined(
            "batch_too_small", f"batch {facts.batch_size}, policy needs {policy.min_batch}"
        )
    if facts.local_steps < policy.min_local_steps:
        return Declined(
            "too_few_steps",
            f"{facts.local_steps} local steps, policy needs {policy.min_local_steps}",
        )
    delta = effective_delta(policy, privacy)
    try:
        spend = plan_spend(privacy, facts, delta=delta)
    except ValueError as exc:
        return Declined("noise_too_low", f"the run's target ε cannot be reached: {exc}")
    if spend is None:
        return Train(spend=None, delta=delta, projection=None)
    recorded = ledger.get(facts.run_id, facts.round)
    if recorded is not None:  # already paid for: re-doing it costs nothing more
        paid = Projection(0.0, recorded.cumulative_epsilon, ledger.spent(delta=delta))
        return Train(spend=spend, delta=delta, projection=paid)
    projection = ledger.project(facts.run_id, spend, delta=delta)
    if policy.max_epsilon is not None and projection.site_epsilon > policy.max_epsilon:
        return Declined(
            "budget_exhausted",
            f"round {facts.round} would take the site's ε to {projection.site_epsilon:.3g} "
            f"(δ={delta:g}), over its max_epsilon {policy.max_epsilon:g}",
            cumulative_epsilon=projection.run_epsilon - projection.epsilon,
        )
    if privacy.max_epsilon is not None and projection.run_epsilon > privacy.max_epsilon:
        return Declined(
            "run_budget_exhausted",
            f"round {facts.round} would take this run's ε to {projection.run_epsilon:.3g} "
            f"(δ={delta:g}), over the run's max_epsilon {privacy.max_epsilon:g}",
            cumulative_epsilon=projection.run_epsilon - projection.epsilon,
        )
    return Train(spend=spend, delta=delta, projection=projection)
