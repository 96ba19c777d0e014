"""The run config's ``aggregation:`` block: which strategy turns updates into a model.

One model per strategy, told apart by ``strategy`` (``fedavg`` when absent), each
refusing fields it does not use, so ``mu`` on ``fedadam`` is a 422 naming the field
rather than a setting silently ignored.

- The mean family (``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``, ``fedyogi``)
  averages the deltas with a weighting (by cases, equal, or cases capped at a
  share per site), streaming in O(model) memory; the server optimisers (Reddi et
  al. 2021, "Adaptive Federated Optimization") then treat the mean delta as a
  pseudo-gradient. ``fedprox`` aggregates like ``fedavg``; its proximal term
  mu/2 ||w - w_global||^2 is added to each site's training loss.
- The robust strategies (``trimmed_mean``, ``median``) take coordinate-wise order
  statistics over the sites' deltas, one vote per site whatever it claims.
- ``norm_bound_factor`` (mean family) clips each update to the median update norm
  times the factor before averaging.

Secure aggregation shows the server only the sum of the weighted updates and the
total weight; anything that needs one site's update (order statistics, norms) or
one site's case count (capped weighting) cannot run with it, and
`secure_aggregation_conflict` says why.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

Weighting = Literal["cases", "equal", "capped"]
MEAN_FAMILY: Final = frozenset({"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"})
ROBUST: Final = frozenset({"trimmed_mean", "median"})
SERVER_OPTIMISERS: Final = frozenset({"fedavgm", "fedadam", "fedyogi"})


class _Block(BaseModel):
    """Unknown fields refused, instances frozen (as every wire model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str  # each variant narrows it to its literal; declared here so it dumps first


class _MeanFamily(_Block):
    """Weighting and the norm bound, shared by every averaging strategy."""

    weighting: Weighting = Field(
        default="cases",
        description="cases: by num_samples; equal: one vote per site; capped: by cases, "
        "but no site above max_share of the total",
    )
    max_share: float | None = Field(
        default=None, gt=0, le=1, description="largest share of the weight one site gets"
    )
    norm_bound_factor: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="clip each update to the median update norm times this factor",
    )

    @model_validator(mode="after")
    def _check_share(self) -> _MeanFamily:
        if self.weighting == "capped" and self.max_share is None:
            raise ValueError("weighting 'capped' needs max_share (e.g. 0.5)")
        if self.weighting != "capped" and self.max_share is not None:
            raise ValueError("max_share applies only to weighting 'capped'")
        return self


class FedAvg(_MeanFamily):
    """McMahan et al. 2017: the weighted mean of the deltas, applied as is."""

    strategy: Literal["fedavg"] = "fedavg"


class FedProx(_MeanFamily):
    """Li et al. 2020: FedAvg at the server, a proximal term in each site's loss."""

    strategy: Literal["fedprox"] = "fedprox"
    mu: float = Field(default=0.01, ge=0, le=1000, description="proximal weight (0: FedAvg)")


class FedAvgM(_MeanFamily):
    """Server momentum: ``m = momentum*m + mean; w += server_learning_rate*m``."""

    strategy: Literal["fedavgm"] = "fedavgm"
    server_learning_rate: float = Field(default=1.0, gt=0, le=100)
    momentum: float = Field(default=0.9, ge=0, lt=1)


class _Adaptive(_MeanFamily):
    """The fields FedAdam and FedYogi share (Reddi et al. 2021, Algorithm 2)."""

    server_learning_rate: float = Field(default=0.01, gt=0, le=100)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0, le=1, description="adaptivity: added to sqrt(v)")


class FedAdam(_Adaptive):
    """Adam on the server, the mean delta as the (negative) pseudo-gradient."""

    strategy: Literal["fedadam"] = "fedadam"


class FedYogi(_Adaptive):
    """Yogi on the server: the second moment moves additively, by sign."""

    strategy: Literal["fedyogi"] = "fedyogi"


class TrimmedMean(_Block):
    """Yin et al. 2018: per coordinate, drop the ``trim_fraction`` largest and smallest."""

    strategy: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float = Field(
        default=0.2, ge=0, lt=0.5, description="beta: share of sites cut at each end"
    )


class Median(_Block):
    """Yin et al. 2018: the coordinate-wise median of the deltas."""

    strategy: Literal["median"] = "median"


def _strategy_tag(value: Any) -> str:
    """The variant to parse: ``strategy`` when given, else ``fedavg``."""
    if isinstance(value, dict):
        tag = value.get("strategy", "fedavg")
        return tag if isinstance(tag, str) else ""
    return str(getattr(value, "strategy", ""))


AggregationConfig = Annotated[
    Annotated[FedAvg, Tag("fedavg")]
    | Annotated[FedProx, Tag("fedprox")]
    | Annotated[FedAvgM, Tag("fedavgm")]
    | Annotated[FedAdam, Tag("fedadam")]
    | Annotated[FedYogi, Tag("fedyogi")]
    | Annotated[TrimmedMean, Tag("trimmed_mean")]
    | Annotated[Median, Tag("median")],
    Discriminator(
        _strategy_tag,
        custom_error_type="unknown_strategy",
        custom_error_message="strategy must be one of fedavg, fedprox, fedavgm, fedadam, "
        "fedyogi, trimmed_mean, median",
    ),
]
MeanFamilyConfig = FedAvg | FedProx | FedAvgM | FedAdam | FedYogi
AdaptiveConfig = FedAdam | FedYogi


def proximal_mu(config: AggregationConfig) -> float:
    """The mu a site adds to its loss: FedProx's, else 0 (plain local training)."""
    return config.mu if isinstance(config, FedProx) else 0.0


def secure_aggregation_conflict(config: AggregationConfig) -> str | None:
    """Why ``config`` cannot run with secure aggregation, or None when it can."""
    if config.strategy in ROBUST:
        return (
            f"aggregation strategy {config.strategy} takes order statistics over each site's "
            "update, and secure aggregation shows the server only their sum; use fedavg, "
            "fedprox, fedavgm, fedadam or fedyogi, or turn secure aggregation off"
        )
    if isinstance(config, _MeanFamily) and config.norm_bound_factor is not None:
        return (
            "aggregation norm_bound_factor clips each site's update on the server, which "
            "never sees one update under secure aggregation; clip at the sites instead "
            "(privacy.clip_norm) or turn secure aggregation off"
        )
    if isinstance(config, _MeanFamily) and config.weighting == "capped":
        return (
            "aggregation weighting 'capped' needs each site's case count, which secure "
            "aggregation hides from the server; use weighting 'cases' or 'equal'"
        )
    return None


def secure_aggregation_on(run_config: object) -> bool:
    """Whether a run config asks for secure aggregation (a flag or a block with ``enabled``)."""
    value = getattr(run_config, "secure_aggregation", None)
    if value is None or isinstance(value, bool):
        return bool(value)
    return bool(getattr(value, "enabled", True))


def refuse_with_secure_aggregation(run_config: object) -> None:
    """Raise `ValueError` (a 422 in a request) when the strategy and secure aggregation clash.

    Reads ``secure_aggregation`` with `getattr`, so it is a no-op until the run config
    has that field, and needs no change once it does.
    """
    config = getattr(run_config, "aggregation", None)
    if config is None or not secure_aggregation_on(run_config):
        return
    reason = secure_aggregation_conflict(config)
    if reason is not None:
        raise ValueError(reason)


def accept_legacy_aggregator(data: Any) -> Any:
    """Read run configs stored before ``aggregation`` existed (``aggregator: fedavg``).

    Runs in the database keep the JSON they were created with; the old field only
    ever held ``fedavg``, which is the default block, so it is dropped. Anything
    else under the old name is an error that names the new field.
    """
    if not isinstance(data, dict) or "aggregator" not in data:
        return data
    if data["aggregator"] != "fedavg" or "aggregation" in data:
        raise ValueError(
            "aggregator was replaced by the aggregation block, e.g. "
            "aggregation: {strategy: fedadam}"
        )
    return {key: value for key, value in data.items() if key != "aggregator"}
