"""FedProx at the site (Li et al. 2020): keep local training near the round's model.

Sites with different data pull the model in different directions when they train
many local steps (client drift). FedProx adds ``mu/2 * ||w - w_global||^2`` to each
local step's loss, with ``w_global`` the weights the round started from, so a
site's weights move less the larger ``mu``. With ``mu = 0`` there is no term at
all: the step is FedAvg's, bit for bit. The server aggregates as FedAvg does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ProximalTerm:
    """The round's starting weights (detached copies) and the proximal weight ``mu``."""

    mu: float
    anchor: tuple[torch.Tensor, ...]

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        """``mu/2 * sum ||p - p_global||^2`` over the trainable parameters, as a scalar."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self.anchor):
            raise ConfigError("the model's parameters changed since the proximal anchor was taken")
        total = torch.zeros((), device=params[0].device if params else None)
        for param, start in zip(params, self.anchor, strict=True):
            total = total + (param.float() - start).pow(2).sum()
        return total * (self.mu / 2)


def proximal_term(model: torch.nn.Module, mu: float) -> ProximalTerm | None:
    """The term anchored at ``model``'s current weights; None when ``mu`` is 0."""
    if not mu >= 0:
        raise ConfigError(f"the proximal weight mu must be >= 0, got {mu}")
    if mu == 0:
        return None
    anchor = tuple(p.detach().float().clone() for p in model.parameters() if p.requires_grad)
    return ProximalTerm(mu=float(mu), anchor=anchor)
