"""The run's ``secure_aggregation`` option and the checks that tie it to the run.

The option forbids extra fields like every wire model. Whether it fits the run
(enough sites, a threshold the quorum can meet, no aggregation that needs to see
one site's update) is checked by `check_run`, which `RunConfig` calls; each
message names the field to change. `check_available` then refuses the option until
the server runs the protocol (`SERVER_RUNS_IT`).
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

MODULUS_BITS: Final = 32  # masked inputs are uint32: the upload is as large as float32's
ALL_PAIRS_UP_TO: Final = 16  # up to this many sites every pair of sites shares a mask
DEFAULT_NEIGHBOURS: Final = 16
MIN_SITES: Final = 3
# Aggregations that must look at each update on its own (robust statistics, server-side
# norm bounds); with secure aggregation the server never sees one update.
# The live round machine does not run the protocol yet (issue 12, phase 2 wires it in):
# until it does, a run asking for it is refused, never run with the updates in the clear.
SERVER_RUNS_IT = False
NEEDS_INDIVIDUAL_UPDATES: Final = frozenset(
    {"trimmed_mean", "median", "krum", "norm_bound", "clip_to_median_norm"}
)


class SecureAggregationConfig(BaseModel):
    """Secure aggregation of a run: Shamir threshold, mask graph and fixed-point format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: int | None = Field(
        default=None,
        ge=2,
        description="shares needed to unmask (t); default: the run's quorum, at most a "
        "neighbourhood",
    )
    neighbours: int = Field(
        default=DEFAULT_NEIGHBOURS,
        ge=2,
        le=1000,
        description="mask partners per site above 16 sites (rounded up to even)",
    )
    clip_range: float = Field(
        default=0.05, gt=0, le=1e3, description="each delta coordinate is clipped to ±this"
    )
    bits: int = Field(default=16, ge=8, le=24, description="fixed-point bits per coordinate")


def neighbourhood_size(secure: SecureAggregationConfig, sites: int) -> int:
    """Holders of each site's shares: its neighbours and itself."""
    if sites <= ALL_PAIRS_UP_TO:
        return sites
    degree = secure.neighbours + secure.neighbours % 2
    return min(sites, degree + 1)


def resolve_threshold(secure: SecureAggregationConfig, *, sites: int, quorum: int) -> int:
    """The threshold t in force: the configured one, else the quorum capped at a neighbourhood."""
    if secure.threshold is not None:
        return secure.threshold
    return max(2, min(quorum, neighbourhood_size(secure, sites)))


def check_run(
    secure: SecureAggregationConfig,
    *,
    sites: int,
    quorum: int,
    aggregator: str = "fedavg",
    server_norm_check: bool = False,
) -> None:
    """Raise `ValueError` naming the field when ``secure`` cannot work for this run.

    ``aggregator`` and ``server_norm_check`` describe what the server would do with
    the updates: anything that needs one site's update is refused, because the server
    only ever holds the masked sum. Clipping is then the site's job.
    """
    if sites < MIN_SITES:
        raise ValueError(
            f"secure_aggregation needs at least {MIN_SITES} sites (sites lists {sites}): "
            "with two, the sum and one's own update give away the other's"
        )
    if aggregator in NEEDS_INDIVIDUAL_UPDATES:
        raise ValueError(
            f"secure_aggregation cannot be combined with aggregator {aggregator!r}: it needs "
            "each site's update, and with secure aggregation the server sees only their sum"
        )
    if server_norm_check:
        raise ValueError(
            "secure_aggregation cannot be combined with a server-side norm check: the server "
            "sees only the sum; clip at the site (secure_aggregation.clip_range)"
        )
    size = neighbourhood_size(secure, sites)
    if quorum < 2:
        raise ValueError(
            f"min_sites ({quorum}) must be at least 2 with secure_aggregation: the sum of a "
            "round closed with one site would be that site's update"
        )
    if secure.threshold is not None:
        if secure.threshold > quorum:
            raise ValueError(
                f"secure_aggregation.threshold ({secure.threshold}) cannot exceed min_sites "
                f"({quorum}): a round that closes with min_sites sites could not unmask"
            )
        if secure.threshold > size:
            raise ValueError(
                f"secure_aggregation.threshold ({secure.threshold}) cannot exceed a site's "
                f"neighbourhood ({size} = secure_aggregation.neighbours, rounded up to even, + 1)"
            )
    if sites > ALL_PAIRS_UP_TO and secure.neighbours + secure.neighbours % 2 >= sites:
        raise ValueError(
            f"secure_aggregation.neighbours ({secure.neighbours}, rounded up to even) must be "
            f"below the number of sites ({sites}); with as many, leave it out: every pair is used"
        )
    if weight_cap(bits=secure.bits, sites=sites) < 1:
        raise ValueError(
            f"secure_aggregation.bits ({secure.bits}) is too large for {sites} sites: "
            "the sum would not fit in 32 bits; lower bits"
        )


def check_available() -> None:
    """Raise `ValueError` while the server cannot run secure aggregation yet.

    A run that asked for it and got plain FedAvg would let the server see every update
    while the admin believes it sees only their sum.
    """
    if not SERVER_RUNS_IT:
        raise ValueError(
            "secure_aggregation is valid but this server does not run it yet: the server "
            "would see each site's update; leave secure_aggregation out until it does"
        )


def levels(bits: int) -> int:
    """Largest magnitude of one site's quantised coordinate per unit of weight."""
    return (1 << (bits - 1)) - 1


def weight_cap(*, bits: int, sites: int) -> int:
    """Largest weight one site may give so that the sum of ``sites`` never wraps mod 2^32.

    Each site's quantised coordinate is at most ``weight * levels(bits)`` in magnitude,
    and the sum must stay within a signed 32-bit integer.
    """
    return ((1 << (MODULUS_BITS - 1)) - 1) // (levels(bits) * sites)
