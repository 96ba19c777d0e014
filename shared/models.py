"""Model registry: a name maps to a MONAI network factory with typed parameters.

Bundles name a model and its parameters as data; the receiver rebuilds the network
from this registry, never from a class path. ``build`` is deterministic for a seed,
so the server's round-0 weights can be recreated and checked.

Only building needs torch and MONAI, and they are imported then: checking a
model's name and parameters (`resolve_params`) needs pydantic alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import InvalidInput

if TYPE_CHECKING:
    import torch

IN_CHANNELS = 4  # t1, t1ce, t2, flair
OUT_CHANNELS = 3  # TC, WT, ET


MAX_PARAMETERS = 50_000_000  # ~200 MB of float32: ten times the BraTS configuration
BlockCount = Annotated[int, Field(ge=1, le=8)]


class SegResNetParams(BaseModel):
    """SegResNet hyper-parameters; defaults are MONAI's BraTS tutorial configuration.

    Every field is bounded, and so is the size of the network they make
    (`parameter_count`): a run must be refused at creation, not fail when it starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # SegResNet normalises with GroupNorm(8 groups): the filters must divide into them.
    init_filters: int = Field(default=16, ge=8, le=128, multiple_of=8)
    blocks_down: tuple[BlockCount, ...] = Field(default=(1, 2, 2, 4), min_length=1, max_length=6)
    blocks_up: tuple[BlockCount, ...] = Field(default=(1, 1, 1), min_length=0, max_length=5)
    dropout_prob: float = Field(default=0.2, ge=0.0, lt=1.0)
    in_channels: int = Field(default=IN_CHANNELS, ge=1, le=16)
    out_channels: int = Field(default=OUT_CHANNELS, ge=1, le=16)

    @model_validator(mode="after")
    def _check_shape(self) -> SegResNetParams:
        # each up level halves the channels of one down level: one fewer up than down
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError("blocks_up must have one entry fewer than blocks_down")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(
                f"the network would have {self.parameter_count():,} parameters; "
                f"at most {MAX_PARAMETERS:,} are allowed"
            )
        return self

    def parameter_count(self) -> int:
        """Trainable parameters of the network these build, computed without torch."""
        filters = self.init_filters
        total = 27 * self.in_channels * filters  # the first convolution
        for level, blocks in enumerate(self.blocks_down):
            channels = filters * 2**level
            if level:
                total += 27 * (channels // 2) * channels  # strided downsampling convolution
            total += blocks * _res_block(channels)
        levels_up = len(self.blocks_up)
        for level, blocks in enumerate(self.blocks_up):
            wide = filters * 2 ** (levels_up - level)
            total += wide * (wide // 2) + blocks * _res_block(wide // 2)
        return total + 2 * filters + (filters + 1) * self.out_channels  # norm, 1x1 head


def _res_block(channels: int) -> int:
    """Two GroupNorms and two bias-free 3x3x3 convolutions of ``channels`` channels."""
    return 4 * channels + 54 * channels * channels


def _segresnet(params: SegResNetParams) -> torch.nn.Module:
    from monai.networks.nets.segresnet import SegResNet

    return SegResNet(
        spatial_dims=3,
        init_filters=params.init_filters,
        in_channels=params.in_channels,
        out_channels=params.out_channels,
        blocks_down=params.blocks_down,
        blocks_up=params.blocks_up,
        dropout_prob=params.dropout_prob,
        # Not in place: Opacus' per-example gradients (DP-SGD) need every activation
        # kept; an in-place ReLU breaks its backward hooks. No weights change.
        act=("RELU", {"inplace": False}),
    )


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A registered model: how to validate its parameters and how to build it."""

    params_type: type[SegResNetParams]
    defaults: Mapping[str, Any]
    factory: Callable[[SegResNetParams], torch.nn.Module]
    description: str


REGISTRY: dict[str, ModelEntry] = {
    "segresnet": ModelEntry(
        SegResNetParams, {}, _segresnet, "MONAI SegResNet, BraTS tutorial configuration (4.7 M)"
    ),
    "segresnet-small": ModelEntry(
        SegResNetParams,
        {
            "init_filters": 8,
            "blocks_down": (1, 1, 1, 1),
            "blocks_up": (1, 1, 1),
            "dropout_prob": 0.0,
        },
        _segresnet,
        "a small SegResNet for CPU tests and demos",
    ),
}


def resolve_params(name: str, params: Mapping[str, Any] | None = None) -> SegResNetParams:
    """Validate ``params`` for model ``name`` over the model's defaults."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise InvalidInput(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        return entry.params_type.model_validate({**entry.defaults, **(params or {})})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in ("model_params", *error["loc"]))
        raise InvalidInput(f"invalid parameters for {name}: {where}: {error['msg']}") from None


def build(name: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """Build model ``name`` with weights drawn deterministically from ``seed``."""
    import torch

    resolved = resolve_params(name, params)
    factory = REGISTRY[name].factory
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(resolved)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
