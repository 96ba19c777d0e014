"""What a round costs in ε: Opacus' accountants for Gaussian noise, plain sums for pure ε.

A round is a `Spend`: the accountant's inputs (noise multiplier σ, sampling rate q,
steps T) for the Gaussian mechanisms, or a pure ε for svt.

- dp_sgd: σ, q = batch / training cases (Poisson sampling), T = local steps.
- dp_fedavg: σ, q = 1 (the site always takes part), T = 1 per round.
- svt: pure ε per round (docs/privacy.md gives the formula).

Gaussian spends are composed by Opacus (RDP by default; PRV on request, falling back
to RDP where PRV cannot answer), over the whole history at once, which is tighter
than adding rounds up. Pure ε spends add (basic composition), and the total is the
sum of the two parts, which basic composition of an (ε₁, δ) and an (ε₂, 0) guarantee
allows. No formula for the Gaussian part is written here.

Opacus (and with it torch) is imported only when a spend is priced: the command line
imports this module for its types, and `fedseg server serve` must stay torch-free.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.schemas import Mechanism

log = logging.getLogger(__name__)

GaussianAccountant = Literal["rdp", "prv"]


@dataclass(frozen=True, slots=True)
class Spend:
    """One round's privacy mechanism and the accountant's inputs for it."""

    mechanism: Mechanism
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    clip: float | None = None
    pure_epsilon: float | None = None

    def __post_init__(self) -> None:
        """Refuse a spend the accountants cannot price."""
        gaussian = self.noise_multiplier is not None
        if gaussian == (self.pure_epsilon is not None):
            raise ValueError("a spend is either Gaussian (noise_multiplier) or pure ε")
        if gaussian and not (self.sample_rate is not None and 0 < self.sample_rate <= 1):
            raise ValueError("a Gaussian spend needs a sampling rate in (0, 1]")
        if self.steps < 0 or (self.pure_epsilon is not None and self.pure_epsilon < 0):
            raise ValueError("steps and ε cannot be negative")

    @property
    def is_gaussian(self) -> bool:
        """True for dp_sgd and dp_fedavg (priced by Opacus)."""
        return self.noise_multiplier is not None


def gaussian_epsilon(
    history: Iterable[Spend], *, delta: float, accountant: GaussianAccountant = "rdp"
) -> float:
    """ε at ``delta`` of the Gaussian spends in ``history``, composed by Opacus."""
    merged: dict[tuple[float, float], int] = {}
    for spend in history:  # composition is additive in steps for the same (σ, q): exact
        if spend.noise_multiplier is not None and spend.sample_rate is not None:
            key = (float(spend.noise_multiplier), float(spend.sample_rate))
            merged[key] = merged.get(key, 0) + int(spend.steps)
    steps = tuple((sigma, rate, count) for (sigma, rate), count in merged.items() if count > 0)
    if not steps:
        return 0.0
    return _composed(steps, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _composed(
    steps: tuple[tuple[float, float, int], ...], delta: float, accountant: GaussianAccountant
) -> float:
    with warnings.catch_warnings():
        # Opacus notes when the best RDP order is at the edge of its grid: the bound is
        # then looser than it could be, never too small. Not an error for the site.
        warnings.filterwarnings("ignore", message="Optimal order is", category=UserWarning)
        return _compose(steps, delta=delta, accountant=accountant)


def _compose(
    steps: tuple[tuple[float, float, int], ...], *, delta: float, accountant: GaussianAccountant
) -> float:
    from opacus.accountants import create_accountant

    if accountant == "prv":
        try:
            prv = create_accountant(mechanism="prv")
            prv.history = list(steps)
            return float(prv.get_epsilon(delta=delta))
        except (ValueError, RuntimeError, OverflowError) as exc:  # outside PRV's domain
            log.info("PRV accountant cannot answer here (%s); using RDP", exc)
    rdp = create_accountant(mechanism="rdp")
    rdp.history = list(steps)
    return float(rdp.get_epsilon(delta=delta))


def total_epsilon(
    history: Sequence[Spend], *, delta: float, accountant: GaussianAccountant = "rdp"
) -> float:
    """ε at ``delta`` of a whole history: Opacus for the Gaussian part plus pure ε."""
    pure = sum(s.pure_epsilon or 0.0 for s in history)
    return gaussian_epsilon(history, delta=delta, accountant=accountant) + pure


def noise_for_target(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: GaussianAccountant = "rdp",
) -> float:
    """The σ at which ``steps`` steps at ``sample_rate`` reach ``target_epsilon`` (Opacus).

    Raises ``ValueError`` when no σ below Opacus' ceiling reaches the target.
    """
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is", category=UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
