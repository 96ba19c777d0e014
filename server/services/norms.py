"""The server's L2 bound on one uploaded delta, derived from the run's privacy block.

Every mechanism's block carries ``clip_norm`` C (DESIGN §10, docs/privacy.md "What the
server checks"). The bound must never refuse an honest delta, noisy or not:

- ``none`` and ``dp_sgd``: the site scales its whole delta to L2 ≤ C just before
  sealing (``dp_sgd`` adds its noise during training, so the delta as sent is clipped
  last), so the bound is C, with a relative slack of `SLACK` for float32 rounding.
- ``dp_fedavg``: the site clips to C and then adds its share N(0, σ²C²/m) to each of
  the d floating-point coordinates (m the run's quorum). By the triangle inequality
  the norm is at most C + ‖noise‖, and ‖noise‖² / (σ²C²/m) is χ²_d, which exceeds
  d + 2√(d·t) + 2t with probability at most e^(-t) (Laurent and Massart 2000). With
  t = `TAIL_T` = 50 an honest upload is refused with probability below 2·10⁻²²; a
  delta 10⁶ times too large is still caught, as long as it is far above the noise.
- ``svt``: every released coordinate is clipped to ±γ (``clip``) after its noise, and
  the rest are zero, so the delta's norm is at most √d·γ; with a ``clip_norm`` too, the
  smaller of the two (the site scales the result to C last).

Only floating-point tensors count, as in the site's clipping; integer tensors
(counters) are checked by the round's tensor spec only.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from shared.arrays import BFLOAT16, FLOATING, Arrays, bfloat16_to_float32
from shared.errors import TensorError
from shared.schemas import DpFedAvgPrivacy, PrivacyConfig, SvtPrivacy, TensorSpec

SLACK: Final = 1e-3
"""Relative tolerance on a clipped norm: float32 scaling and summing are not exact."""
TAIL_T: Final = 50.0
"""The χ² tail parameter t: an honest dp_fedavg delta is refused with probability ≤ e^-t."""


def coordinates(spec: list[TensorSpec]) -> int:
    """How many floating-point coordinates a delta of this spec has (d)."""
    return sum(math.prod(item.shape) for item in spec if item.dtype in FLOATING)


def norm_bound(privacy: PrivacyConfig, *, d: int, quorum: int) -> float | None:
    """The largest L2 norm an honest site's delta may have, or None when unbounded."""
    clip = privacy.clip_norm
    if isinstance(privacy, DpFedAvgPrivacy):
        std = privacy.noise_multiplier * privacy.clip_norm / math.sqrt(max(quorum, 1))
        chi2 = d + 2 * math.sqrt(d * TAIL_T) + 2 * TAIL_T
        return (privacy.clip_norm + std * math.sqrt(chi2)) * (1 + SLACK)
    if isinstance(privacy, SvtPrivacy):
        svt = math.sqrt(d) * privacy.clip
        return min(svt, clip) * (1 + SLACK) if clip is not None else svt * (1 + SLACK)
    return None if clip is None else clip * (1 + SLACK)


def l2_norm(tensors: Arrays) -> float:
    """The L2 norm of the floating-point tensors, summed in float64."""
    total = 0.0
    for array in tensors.values():
        if array.dtype == BFLOAT16:
            array = bfloat16_to_float32(array)
        if array.dtype.kind == "f":  # one tensor-sized float64 copy at a time
            flat = array.astype(np.float64).reshape(-1)
            total += float(np.dot(flat, flat))
    return math.sqrt(total)


def check_norm(tensors: Arrays, bound: float | None) -> None:
    """Refuse a delta above ``bound`` (`TensorError`, ``norm_exceeded``)."""
    if bound is None:
        return
    norm = l2_norm(tensors)
    if not norm <= bound:
        raise TensorError(
            f"the update's L2 norm {norm:.6g} is above the run's bound {bound:.6g} "
            "(config.privacy.clip_norm)",
            code="norm_exceeded",
        )
