"""What this server runs today, so a run never claims a protection it would not get.

The wire schemas already accept the privacy and aggregation blocks that the next steps
wire into the rounds (DP mechanisms, server optimisers, robust strategies, FedProx).
Until the round machinery and the agent carry them, a run asking for one is refused
with 422 naming the field, instead of quietly training plain FedAvg without the
protection or the strategy the admin asked for.
"""

from __future__ import annotations

from shared.aggregation import FedAvg
from shared.errors import InvalidInput
from shared.schemas import RunConfig


def refuse_unserved(config: RunConfig) -> None:
    """Raise `InvalidInput` for a privacy mechanism or strategy this server cannot run yet."""
    mechanism = str(getattr(config.privacy, "mechanism", "none"))
    if mechanism != "none":
        raise InvalidInput(
            f"config.privacy.mechanism: {mechanism} is not run by this server yet; the sites "
            "would train without it, so the run is refused (docs/privacy.md says what is wired)"
        )
    if config.aggregation != FedAvg():
        raise InvalidInput(
            f"config.aggregation: {config.aggregation.strategy} (or its weighting or norm bound) "
            "is not run by this server yet; only the default FedAvg by cases is "
            "(docs/strategies.md)"
        )
