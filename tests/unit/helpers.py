"""Small builders shared by the unit tests."""

from __future__ import annotations

import torch


def tiny_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few tensors of several shapes and dtypes, including 0-d and empty ones."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 2, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
        "norm.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "scale": torch.tensor(0.5),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(5, generator=generator).half(),
    }
