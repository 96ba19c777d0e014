"""What this server runs today, so a run never claims a protection it would not get.

The privacy mechanisms (``dp_sgd``, ``dp_fedavg``, ``svt``) run at the sites, which
clip, add noise and account ε themselves; the server carries the block in every task,
checks each update's ε ledger entry and the delta's norm against the run's clip, records
declines, and ends a run ``budget_exhausted`` when the sites' budgets are spent. What the
server still cannot run is refused with 422 naming the field, instead of quietly training
plain FedAvg without the protection or the strategy the admin asked for: secure
aggregation (the server would see every single update) and strategies other than the
default FedAvg by cases.
"""

from __future__ import annotations

from shared.aggregation import FedAvg
from shared.errors import InvalidInput
from shared.schemas import RunConfig


def refuse_unserved(config: RunConfig) -> None:
    """Raise `InvalidInput` for secure aggregation or a strategy this server cannot run yet."""
    if config.secure_aggregation is not None:
        raise InvalidInput(
            "config.secure_aggregation: this server does not run secure aggregation yet; "
            "it would see each site's update (docs/secure-aggregation.md)"
        )
    if config.aggregation != FedAvg():
        raise InvalidInput(
            f"config.aggregation: {config.aggregation.strategy} (or its weighting or norm bound) "
            "is not run by this server yet; only the default FedAvg by cases is "
            "(docs/strategies.md)"
        )
