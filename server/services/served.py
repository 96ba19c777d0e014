"""What this server runs today, so a run never claims a protection it would not get.

The privacy mechanisms (``dp_sgd``, ``dp_fedavg``, ``svt``) run at the sites, which
clip, add noise and account ε themselves; the server carries the block in every task,
checks each update's ε ledger entry and the delta's norm against the run's clip, records
declines, and ends a run ``budget_exhausted`` when the sites' budgets are spent. Every
``aggregation:`` strategy runs at the round close (`closing`), and FedProx's ``mu``
travels in the signed task. What the server still cannot run is refused with 422 naming
the field, instead of quietly training without the protection or the strategy the admin
asked for: secure aggregation (the server would see every single update), and FedProx
with DP-SGD (the sites' Opacus steps do not add the proximal term yet).
"""

from __future__ import annotations

from shared.aggregation import proximal_mu
from shared.errors import InvalidInput
from shared.schemas import DpSgdPrivacy, RunConfig


def refuse_unserved(config: RunConfig) -> None:
    """Raise `InvalidInput` for secure aggregation, or FedProx's term under DP-SGD."""
    if config.secure_aggregation is not None:
        raise InvalidInput(
            "config.secure_aggregation: this server does not run secure aggregation yet; "
            "it would see each site's update (docs/secure-aggregation.md)"
        )
    if proximal_mu(config.aggregation) > 0 and isinstance(config.privacy, DpSgdPrivacy):
        raise InvalidInput(
            "config.aggregation: fedprox's proximal term is not added by the sites' DP-SGD "
            "steps yet; use mu 0, another strategy, or privacy mechanism dp_fedavg "
            "(docs/strategies.md)"
        )
