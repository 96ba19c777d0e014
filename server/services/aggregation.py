"""Streaming FedAvg: a running weighted sum of deltas, O(model) memory for any N.

``consensus = base + sum_i(w_i * delta_i) / sum_i(w_i)``, with ``w_i`` the site's
``num_samples``. Floating-point tensors accumulate in float32 (like the model);
integer tensors accumulate in float64 and are rounded when applied, as
`shared.tensors.apply_delta` does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from shared.errors import TensorError
from shared.schemas import TensorSpec
from shared.tensors import Tensors, dtype_from_name


class Accumulator:
    """The running weighted sum of one round's accepted deltas."""

    def __init__(self, spec: list[TensorSpec]) -> None:
        self._sums: Tensors = {}
        for item in spec:
            floating = dtype_from_name(item.dtype).is_floating_point
            self._sums[item.name] = torch.zeros(
                item.shape, dtype=torch.float32 if floating else torch.float64
            )
        self.total_weight = 0.0
        self.count = 0
        self._spent = False

    def add(self, change: Mapping[str, torch.Tensor], weight: float) -> None:
        """Add ``weight * change``; ``change`` must have exactly the spec's names."""
        if set(change) != set(self._sums):
            raise TensorError("update tensors differ from the round's model")
        if self._spent:
            raise RuntimeError("this accumulator has already produced its consensus")
        if weight < 0:
            raise TensorError("weights cannot be negative", code="bad_num_samples")
        for name, total in self._sums.items():
            total.add_(change[name].to(total.dtype), alpha=weight)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Tensors:
        """The weighted mean delta (zeros when nothing has weight)."""
        scale = 1.0 / self.total_weight if self.total_weight > 0 else 0.0
        return {name: total * scale for name, total in self._sums.items()}

    def consensus(self, base: Mapping[str, torch.Tensor]) -> Tensors:
        """``base + mean`` in the base tensors' dtypes; ``base`` is only read.

        The sums' memory is reused for the result, so the accumulator is spent
        afterwards: no second model-sized buffer is needed to close a round.
        """
        if set(base) != set(self._sums):
            raise TensorError("base model and round disagree on tensor names")
        if self._spent:
            raise RuntimeError("this accumulator has already produced its consensus")
        self._spent = True
        scale = 1.0 / self.total_weight if self.total_weight > 0 else 0.0
        out: Tensors = {}
        for name, total in self._sums.items():
            tensor = base[name]
            if tensor.is_floating_point():
                total.mul_(scale).add_(tensor.to(total.dtype))
                out[name] = total.to(tensor.dtype)
            else:
                out[name] = tensor + torch.round(total.mul_(scale)).to(tensor.dtype)
        return out
