"""Privacy messages that cross the network: a site's signed decline and its ε ledger entry.

A round a site will not train is *declined*, never skipped silently: the site signs a
`Decline` (run, round, site, a stable reason code) with its enrolled Ed25519 key,
under its own domain so a decline's signature can never pass for a task's or an
update's. An `EpsilonEntry` is one round of the site's ε ledger, the record of what
the site's privacy cost was; it rides in the signed update header.

`EpsilonEntry` lives in `shared.schemas` (the update header carries it) and is
re-exported here.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Final, Literal, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import (
    Accountant,
    Base64,
    EpsilonEntry,
    Name,
    RoundNumber,
    Sha256Hex,
    WireModel,
    canonical_json,
)

__all__ = [
    "BUDGET_REASONS",
    "DECLINE_REASONS",
    "Accountant",
    "Decline",
    "DeclineReason",
    "DeclineReceipt",
    "EpsilonEntry",
    "SignedDecline",
    "sign_decline",
    "verify_decline",
]

DECLINE_DOMAIN: Final = b"fedseg/decline/v1"

DeclineReason = Literal[
    "policy_mechanism",  # the site's policy does not allow the run's mechanism
    "budget_exhausted",  # this round would take the site past its max_epsilon
    "run_budget_exhausted",  # this round would take the site past the run's max_epsilon
    "too_few_cases",  # fewer training cases than the policy's min_cases
    "batch_too_small",  # the run's batch is below the policy's min_batch
    "too_few_steps",  # the run's local steps are below the policy's min_local_steps
    "noise_too_low",  # the noise cannot reach the ε the run asks within the budget
    "secure_mode_unavailable",  # secure_mode asked for, no CSPRNG backend at the site
]
DECLINE_REASONS: Final[tuple[str, ...]] = get_args(DeclineReason)
BUDGET_REASONS: Final = frozenset({"budget_exhausted", "run_budget_exhausted"})
"""Declines that say a privacy budget is spent: a run stopped by them is budget_exhausted."""


class Decline(WireModel):
    """A site's refusal to train one round, with a stable reason code."""

    format_version: Literal[1] = 1
    run_id: str = Field(min_length=1, max_length=64)
    round: RoundNumber
    site: Name
    reason: DeclineReason
    message: str = Field(max_length=2000)
    cumulative_epsilon: float | None = Field(
        default=None, ge=0, description="the site's ε spent in this run so far"
    )
    created_at: datetime


class SignedDecline(WireModel):
    """A decline and the site's Ed25519 signature over its canonical JSON."""

    decline: Decline
    key_id: Sha256Hex
    signature: Base64


class DeclineReceipt(WireModel):
    """The server's acknowledgement of a decline: recorded once, the round goes on."""

    run_id: str
    round: RoundNumber
    site: str
    reason: DeclineReason
    recorded_at: datetime


def _decline_digest(decline: Decline) -> bytes:
    return crypto.domain_digest(DECLINE_DOMAIN, canonical_json(decline))


def sign_decline(decline: Decline, site_key: Ed25519PrivateKey) -> SignedDecline:
    """Sign ``decline`` with the site's enrolled key."""
    return SignedDecline(
        decline=decline,
        key_id=crypto.key_id(site_key.public_key()),
        signature=base64.b64encode(crypto.sign(site_key, _decline_digest(decline))).decode(),
    )


def verify_decline(signed: SignedDecline, site_key: Ed25519PublicKey) -> Decline:
    """Return the decline if ``site_key`` signed it; raise `IntegrityError` if not."""
    if signed.key_id != crypto.key_id(site_key):
        raise IntegrityError("decline is signed by another key than the site's")
    try:
        signature = base64.b64decode(signed.signature, validate=True)
    except binascii.Error:
        raise IntegrityError("decline signature is not base64") from None
    crypto.verify(site_key, signature, _decline_digest(signed.decline))
    return signed.decline
