"""One round's privacy at the site: decide, plan the mechanism, release the delta, decline.

The agent's glue over the pure parts of `client.privacy`: it loads the site's policy
(`policy.load_policy`, from the env/secret or the state dir), builds `LocalFacts` from
the signed task and the site's training split, and asks `decide` before any
training. What a `Train` decision needs afterwards lives here too, so the agent stays
orchestration: the DP-SGD plan for the trainer, the ledger entry (recorded before the
update is sealed, so whatever leaves the site has been paid for), the mechanism
applied to the delta (dp_fedavg's clip and noise share, svt's selective sharing, a
plain clip), the FedAvg weight the accounting assumes, and a signed decline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.privacy.decision import Decision, Declined, LocalFacts, Train, decide
from client.privacy.dp_fedavg import EQUAL_WEIGHT, clip_to, privatise
from client.privacy.dp_sgd import DpSgdPlan
from client.privacy.ledger import EpsilonLedger
from client.privacy.noise import NoiseSource
from client.privacy.policy import SitePolicy, load_policy
from client.privacy.svt import share
from shared.privacy import Decline, SignedDecline, sign_decline
from shared.schemas import (
    DpFedAvgPrivacy,
    DpSgdPrivacy,
    EpsilonEntry,
    PrivacyConfig,
    SvtPrivacy,
    Task,
)
from shared.tensors import Tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundDecision:
    """What the site decided for one round, with the policy and ledger it decided on."""

    decision: Decision
    policy: SitePolicy
    source: str
    ledger: EpsilonLedger


def local_facts(task: Task, train_cases: int) -> LocalFacts:
    """The facts `decide` weighs: the site's training cases and the run's shape."""
    return LocalFacts(
        run_id=task.run_id,
        round=task.round,
        train_cases=train_cases,
        batch_size=task.training.batch_size,
        local_steps=task.training.local_steps,
        rounds=task.rounds,
        min_sites=task.quorum,
    )


def decide_round(state_dir: Path, task: Task, *, train_cases: int) -> RoundDecision:
    """Load the policy in force and decide this round, before anything is trained."""
    policy, source = load_policy(state_dir)
    ledger = EpsilonLedger(state_dir, accountant=policy.accountant)
    decision = decide(policy, task.privacy, local_facts(task, train_cases), ledger)
    return RoundDecision(decision=decision, policy=policy, source=source, ledger=ledger)


def dp_sgd_plan(privacy: PrivacyConfig, decision: Train) -> DpSgdPlan | None:
    """The trainer's DP-SGD plan, priced by the decision (None unless dp_sgd)."""
    spend = decision.spend
    if not isinstance(privacy, DpSgdPrivacy) or spend is None:
        return None
    assert spend.noise_multiplier is not None and spend.sample_rate is not None
    return DpSgdPlan(
        noise_multiplier=spend.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        sample_rate=spend.sample_rate,
        secure_mode=privacy.secure_mode,
    )


def record_round(ledger: EpsilonLedger, task: Task, decision: Train) -> EpsilonEntry | None:
    """Write the round's ledger entry (fsync'd) before its update is sealed; once only."""
    if decision.spend is None:
        return None
    return ledger.record(task.run_id, task.round, decision.spend, delta=decision.delta)


def upload_weight(privacy: PrivacyConfig, num_samples: int) -> int:
    """The update's FedAvg weight: dp_fedavg's accounting assumes equal weights."""
    return EQUAL_WEIGHT if isinstance(privacy, DpFedAvgPrivacy) else num_samples


def release(
    change: Tensors,
    privacy: PrivacyConfig,
    *,
    quorum: int,
    noise: NoiseSource | None = None,
) -> tuple[Tensors, float | None]:
    """The delta that leaves the site, and its L2 norm before any clipping (None unclipped).

    dp_fedavg clips to C and adds the site's noise share N(0, σ²C²/m); svt shares at
    most its fraction of coordinates; dp_sgd's and plain deltas are clipped to
    ``clip_norm`` when the run sets one (post-processing: it costs no ε). ``noise``
    defaults to a fresh OS-keyed ChaCha20 stream.
    """
    source = noise or NoiseSource()
    norm: float | None = None
    if isinstance(privacy, DpFedAvgPrivacy):
        _, norm = clip_to(change, privacy.clip_norm)
        out = privatise(
            change,
            clip_norm=privacy.clip_norm,
            noise_multiplier=privacy.noise_multiplier,
            min_sites=quorum,
            noise=source,
        )
        return out, norm
    if isinstance(privacy, SvtPrivacy):
        change, shared = share(
            change,
            fraction=privacy.fraction,
            epsilon=privacy.epsilon,
            threshold=privacy.threshold,
            clip=privacy.clip,
            noise=source,
        )
        log.info("svt: %d coordinates shared (fraction %g)", shared, privacy.fraction)
    if privacy.clip_norm is not None:
        change, norm = clip_to(change, privacy.clip_norm)
    return change, norm


def signed_decline(
    task: Task, declined: Declined, *, site: str, site_key: Ed25519PrivateKey
) -> SignedDecline:
    """The site's signed refusal of this round, with its stable reason code."""
    decline = Decline(
        run_id=task.run_id,
        round=task.round,
        site=site,
        reason=declined.reason,
        message=declined.message[:2000],
        cumulative_epsilon=(
            None if declined.cumulative_epsilon is None else max(0.0, declined.cumulative_epsilon)
        ),
        created_at=datetime.now(UTC),
    )
    return sign_decline(decline, site_key)
