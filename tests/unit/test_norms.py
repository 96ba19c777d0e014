"""The server's L2 bound per mechanism: honest deltas (noisy ones too) pass, huge ones do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.services.norms import SLACK, check_norm, coordinates, l2_norm, norm_bound
from shared.arrays import Arrays
from shared.errors import TensorError
from shared.schemas import (
    DpFedAvgPrivacy,
    DpSgdPrivacy,
    PlainPrivacy,
    SvtPrivacy,
    TensorSpec,
)

SPEC = [
    TensorSpec(name="a", shape=[40, 25], dtype="float32"),
    TensorSpec(name="b", shape=[24], dtype="float32"),
    TensorSpec(name="steps", shape=[], dtype="int64"),
]
D = 1024


def _delta(rng: np.random.Generator, norm: float) -> Arrays:
    a = rng.standard_normal((40, 25)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    scale = norm / math.sqrt(float(np.sum(a.astype(np.float64) ** 2) + np.sum(b**2)))
    return {"a": a * scale, "b": b * scale, "steps": np.array(10**9, dtype=np.int64)}


def test_coordinates_count_floating_point_tensors_only() -> None:
    assert coordinates(SPEC) == D


def test_no_clip_means_no_bound() -> None:
    assert norm_bound(PlainPrivacy(), d=D, quorum=1) is None
    assert norm_bound(DpSgdPrivacy(noise_multiplier=1.0), d=D, quorum=1) is None
    check_norm({"a": np.full(4, 1e30, dtype=np.float32)}, None)


def test_a_clipped_delta_passes_and_a_larger_one_is_refused() -> None:
    rng = np.random.default_rng(0)
    bound = norm_bound(PlainPrivacy(clip_norm=2.0), d=D, quorum=1)
    assert bound == pytest.approx(2.0 * (1 + SLACK))
    check_norm(_delta(rng, 2.0), bound)
    assert l2_norm(_delta(rng, 2.0)) == pytest.approx(2.0, rel=1e-6)  # integers do not count
    with pytest.raises(TensorError) as refused:
        check_norm(_delta(rng, 2.1), bound)
    assert refused.value.code == "norm_exceeded"
    nan = _delta(rng, 1.0)
    nan["b"][0] = np.nan
    with pytest.raises(TensorError):
        check_norm(nan, bound)  # NaN is never "at most" the bound


def test_dp_sgd_is_bounded_by_its_clip_norm() -> None:
    privacy = DpSgdPrivacy(noise_multiplier=1.0, clip_norm=0.5)
    assert norm_bound(privacy, d=D, quorum=3) == pytest.approx(0.5 * (1 + SLACK))


@pytest.mark.parametrize(("sigma", "quorum"), [(0.5, 1), (1.0, 2), (4.0, 3)])
def test_honest_dp_fedavg_deltas_with_their_noise_share_always_pass(
    sigma: float, quorum: int
) -> None:
    """Clip to C, add N(0, σ²C²/m) per coordinate, as a site does: never refused."""
    rng = np.random.default_rng(1)
    privacy = DpFedAvgPrivacy(clip_norm=1.0, noise_multiplier=sigma)
    bound = norm_bound(privacy, d=D, quorum=quorum)
    assert bound is not None
    std = sigma / math.sqrt(quorum)
    expected = math.sqrt(1 + D * std**2)
    assert expected < bound < 3 * expected  # generous, but still a bound
    for _ in range(200):
        delta = _delta(rng, 1.0)
        delta["a"] += rng.normal(0, std, (40, 25)).astype(np.float32)
        delta["b"] += rng.normal(0, std, 24).astype(np.float32)
        check_norm(delta, bound)
    with pytest.raises(TensorError):
        check_norm(_delta(rng, 1e6), bound)


def test_svt_is_bounded_by_its_coordinate_clip_and_by_clip_norm() -> None:
    rng = np.random.default_rng(2)
    privacy = SvtPrivacy(epsilon=1.0, clip=1e-3, fraction=1.0)
    bound = norm_bound(privacy, d=D, quorum=1)
    assert bound == pytest.approx(math.sqrt(D) * 1e-3 * (1 + SLACK))
    every = {
        name: np.full(spec.shape, 1e-3, dtype=np.float32)
        for name, spec in (("a", SPEC[0]), ("b", SPEC[1]))
    }
    check_norm(every, bound)  # every coordinate at ±γ is the worst honest case
    with pytest.raises(TensorError):
        check_norm(_delta(rng, 1.0), bound)
    tighter = SvtPrivacy(epsilon=1.0, clip=1e-3, clip_norm=1e-3)
    assert norm_bound(tighter, d=D, quorum=1) == pytest.approx(1e-3 * (1 + SLACK))
