"""Aggregation strategies: how a round's updates become the next model (numpy only).

`aggregate` is the one entry point a round calls at close: it weighs the sites
(`weighting`), averages (`mean`, streaming) or takes order statistics (`robust`,
chunked), and lets a server optimiser (`optimisers`) step on the result.
"""

from server.services.strategies.core import Aggregate, aggregate, apply_delta
from server.services.strategies.optimisers import ServerState, load_state, new_state
from server.services.strategies.robust import coordinate_median, trimmed_mean
from server.services.strategies.updates import SiteUpdate, from_memory, mapped_updates
from server.services.strategies.weighting import capped_shares, site_weights

__all__ = [
    "Aggregate",
    "ServerState",
    "SiteUpdate",
    "aggregate",
    "apply_delta",
    "capped_shares",
    "coordinate_median",
    "from_memory",
    "load_state",
    "mapped_updates",
    "new_state",
    "site_weights",
    "trimmed_mean",
]
