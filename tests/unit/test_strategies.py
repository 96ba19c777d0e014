"""Aggregation strategies against NumPy references: the mean family, robust, optimisers.

The references are written out here with plain float64 numpy, independently of the
streaming and chunked code under test; hypothesis varies the sites, their order,
their weights (zeros included) and the chunk size.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.services.aggregation import Accumulator
from server.services.strategies import (
    SiteUpdate,
    aggregate,
    capped_shares,
    coordinate_median,
    from_memory,
    load_state,
    mapped_updates,
    new_state,
    site_weights,
    trimmed_mean,
)
from server.services.strategies.core import clip_scales, update_norm
from server.services.strategies.optimisers import server_step
from shared.aggregation import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Median,
    TrimmedMean,
)
from shared.arrays import Arrays, spec_of, to_safetensors
from shared.errors import IntegrityError, TensorError

SHAPES = {"conv.weight": (3, 2, 5), "conv.bias": (3,), "norm.weight": (7,)}


def _arrays(seed: int, scale: float = 1.0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) * scale).astype(np.float32)
        for name, shape in SHAPES.items()
    }


def _weighted_reference(base: Arrays, deltas: list[Arrays], weights: list[float]) -> Arrays:
    total = sum(weights)
    return {
        name: base[name].astype(np.float64)
        + (
            sum(w * d[name].astype(np.float64) for d, w in zip(deltas, weights, strict=True))
            / total
            if total
            else 0.0
        )
        for name in base
    }


def _stacked(deltas: list[Arrays], name: str) -> np.ndarray:
    return np.stack([d[name].astype(np.float64) for d in deltas])


def _close(got: Arrays, want: Arrays, atol: float = 2e-5) -> None:
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=atol, err_msg=name)


seeds = st.integers(min_value=0, max_value=2**31 - 1)
site_lists = st.lists(
    st.tuples(seeds, st.integers(min_value=0, max_value=500)), min_size=1, max_size=7
).filter(lambda sites: any(count > 0 for _, count in sites))
chunks = st.sampled_from([1, 3, 8, 1 << 18])


# --- weighting -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=12),
    max_share=st.floats(min_value=0.05, max_value=1.0),
)
def test_capped_shares_sum_to_one_respect_the_cap_and_keep_the_order(
    counts: list[int], max_share: float
) -> None:
    shares = capped_shares(counts, max_share)
    positive = [c for c in counts if c > 0]
    if not positive:
        assert shares == [0.0] * len(counts)
        return
    assert sum(shares) == pytest.approx(1.0)
    if max_share * len(positive) > 1:
        assert max(shares) <= max_share + 1e-12
    else:  # the cap cannot be met: as close as possible, equal shares
        assert all(
            s == pytest.approx(1 / len(positive)) for s, c in zip(shares, counts, strict=True) if c
        )
    pairs = sorted(zip(counts, shares, strict=True))
    for (_, smaller), (_, larger) in itertools.pairwise(pairs):
        assert smaller <= larger + 1e-12  # more cases never means a smaller share
    assert all(s == 0 for s, c in zip(shares, counts, strict=True) if c == 0)


def test_a_site_claiming_a_billion_cases_gets_at_most_its_cap() -> None:
    shares = site_weights([10**9, 12, 30, 4, 20], weighting="capped", max_share=0.4)
    assert shares[0] == pytest.approx(0.4)
    assert sum(shares) == pytest.approx(1.0)
    # the rest keep their by-cases proportions
    rest = np.array(shares[1:]) / sum(shares[1:])
    np.testing.assert_allclose(rest, np.array([12, 30, 4, 20]) / 66)
    # by cases, it would have owned the model
    by_cases = site_weights([10**9, 12, 30, 4, 20], weighting="cases")
    assert by_cases[0] / sum(by_cases) > 0.9999


def test_the_cap_applies_in_aggregation() -> None:
    base = _arrays(1)
    honest, liar = _arrays(2, 0.1), _arrays(3, 0.1)
    updates = from_memory([(liar, 10**9), (honest, 10), (_arrays(4, 0.1), 10)])
    config = FedAvg(weighting="capped", max_share=0.5)
    result = aggregate(config, base=base, updates=updates)
    assert result.site_weights[0] == pytest.approx(0.5)
    want = _weighted_reference(base, [u.arrays for u in updates], [0.5, 0.25, 0.25])
    _close(result.weights, want)


def test_equal_weighting_ignores_counts_but_not_absence() -> None:
    assert site_weights([1, 1000, 0], weighting="equal") == [1.0, 1.0, 0.0]
    with pytest.raises(TensorError):
        site_weights([-1], weighting="cases")


# --- the mean family -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(base_seed=seeds, sites=site_lists, weighting=st.sampled_from(["cases", "equal"]))
def test_mean_family_matches_a_numpy_reference_in_any_order(
    base_seed: int, sites: list[tuple[int, int]], weighting: str
) -> None:
    base = _arrays(base_seed)
    pairs = [(_arrays(seed, 0.1), count) for seed, count in sites]
    config = FedProx(weighting=weighting, mu=0.1)  # type: ignore[arg-type]
    result = aggregate(config, base=base, updates=from_memory(pairs))
    weights = [float(c) if weighting == "cases" else float(c > 0) for _, c in pairs]
    want = _weighted_reference(base, [d for d, _ in pairs], weights)
    _close(result.weights, want)
    flipped = aggregate(config, base=base, updates=from_memory(pairs[::-1]))
    _close(flipped.weights, result.weights, atol=1e-6)


def test_fedavg_by_cases_is_todays_accumulator_to_the_bit() -> None:
    base = _arrays(0)
    pairs = [(_arrays(seed, 0.1), count) for seed, count in [(1, 10), (2, 3), (3, 250)]]
    accumulator = Accumulator(spec_of(base))
    for change, count in pairs:
        accumulator.add(change, float(count))
    today = accumulator.consensus(base)
    result = aggregate(FedAvg(), base=base, updates=from_memory(pairs))
    for name in base:
        assert result.weights[name].tobytes() == today[name].tobytes()


def test_equal_updates_give_that_update_whatever_the_weights() -> None:
    base, change = _arrays(5), _arrays(6, 0.1)
    for config in (FedAvg(), FedAvg(weighting="equal"), TrimmedMean(), Median()):
        result = aggregate(
            config, base=base, updates=from_memory([(change, 1), (change, 50), (change, 7)])
        )
        _close(result.weights, {n: base[n] + change[n].astype(np.float64) for n in base})


def test_zero_weight_sites_do_not_count_anywhere() -> None:
    base = _arrays(7)
    honest = [(_arrays(8, 0.1), 5), (_arrays(9, 0.1), 9), (_arrays(10, 0.1), 2)]
    junk = (_arrays(11, 100.0), 0)
    for config in (FedAvg(), TrimmedMean(trim_fraction=0.2), Median(), FedAvg(weighting="equal")):
        without = aggregate(config, base=base, updates=from_memory(honest))
        with_junk = aggregate(config, base=base, updates=from_memory([junk, *honest]))
        _close(with_junk.weights, without.weights, atol=1e-6)


def test_norm_bound_clips_to_the_median_norm_times_the_factor() -> None:
    base = _arrays(12)
    deltas = [_arrays(13, 0.1), _arrays(14, 0.1), _arrays(15, 0.1)]
    deltas.append({n: a * 50 for n, a in deltas[0].items()})  # model replacement
    norms = [update_norm(d) for d in deltas]
    reference_norm = np.sqrt(
        sum(float((a.astype(np.float64) ** 2).sum()) for a in deltas[0].values())
    )
    assert norms[0] == pytest.approx(reference_norm)
    scales = clip_scales(norms, 1.5, [True] * 4)
    bound = 1.5 * float(np.median(norms))
    assert scales[3] * norms[3] == pytest.approx(bound)
    assert all(s == 1.0 for s, n in zip(scales, norms, strict=True) if n <= bound)
    counts = [10, 10, 10, 10]
    result = aggregate(
        FedAvg(norm_bound_factor=1.5),
        base=base,
        updates=from_memory(list(zip(deltas, counts, strict=True))),
    )
    clipped = [{n: a * s for n, a in d.items()} for d, s in zip(deltas, scales, strict=True)]
    _close(result.weights, _weighted_reference(base, clipped, [10.0] * 4))
    plain = aggregate(
        FedAvg(), base=base, updates=from_memory(list(zip(deltas, counts, strict=True)))
    )
    attack = lambda arrays: update_norm({n: arrays[n] - base[n] for n in base})  # noqa: E731
    assert attack(result.weights) < attack(plain.weights) / 5


# --- robust --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(sites=site_lists, beta=st.sampled_from([0.0, 0.1, 0.2, 0.34, 0.49]), chunk=chunks)
def test_trimmed_mean_and_median_match_numpy_in_any_order(
    sites: list[tuple[int, int]], beta: float, chunk: int
) -> None:
    deltas = [_arrays(seed, 0.1) for seed, _ in sites]
    cut = int(np.floor(beta * len(deltas)))
    got = trimmed_mean(deltas, beta, chunk_elements=chunk)
    got_reversed = trimmed_mean(deltas[::-1], beta, chunk_elements=chunk)
    median = coordinate_median(deltas, chunk_elements=chunk)
    for name in SHAPES:
        stacked = np.sort(_stacked(deltas, name), axis=0)
        want = stacked[cut : len(deltas) - cut].mean(axis=0)
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(got[name], got_reversed[name])
        np.testing.assert_allclose(median[name], np.median(stacked, axis=0), rtol=1e-6)


def test_robust_strategies_ignore_claimed_cases_and_resist_one_outlier() -> None:
    base = _arrays(20)
    honest = [_arrays(21 + i, 0.1) for i in range(4)]
    hostile = {n: a * 50 for n, a in honest[0].items()}
    for config in (TrimmedMean(trim_fraction=0.2), Median()):
        clean = aggregate(config, base=base, updates=from_memory([(d, 10) for d in honest]))
        attacked = aggregate(
            config, base=base, updates=from_memory([(hostile, 10**9)] + [(d, 10) for d in honest])
        )
        assert attacked.site_weights == [1.0] * 5
        for name in SHAPES:
            spread = np.abs(_stacked(honest, name)).max(axis=0)
            assert (np.abs(attacked.weights[name] - base[name]) <= spread + 1e-6).all()
            assert np.abs(attacked.weights[name] - clean.weights[name]).max() < 0.5


def test_robust_refuses_mismatched_updates() -> None:
    bad = _arrays(1)
    bad["conv.bias"] = np.zeros(4, np.float32)
    with pytest.raises(TensorError):
        coordinate_median([_arrays(0), bad])
    with pytest.raises(TensorError):
        aggregate(Median(), base=_arrays(0), updates=from_memory([(_arrays(1), 0)]))


def test_integer_tensors_round_like_fedavg() -> None:
    base = {"w": np.zeros(3, np.float32), "count": np.array([10], np.int64)}
    deltas = [{"w": np.ones(3, np.float32), "count": np.array([k], np.int64)} for k in (1, 2, 4)]
    for config in (Median(), TrimmedMean(trim_fraction=0.0)):
        result = aggregate(config, base=base, updates=from_memory([(d, 1) for d in deltas]))
        assert result.weights["count"].dtype == np.int64
        assert int(result.weights["count"][0]) == 12  # median 2; mean 7/3 rounds to 2
        np.testing.assert_array_equal(result.weights["w"], np.ones(3, np.float32))


def test_mapped_files_give_the_same_result_as_memory(tmp_path: Path) -> None:
    base = _arrays(30)
    pairs = [(_arrays(31 + i, 0.1), 5 + i) for i in range(5)]
    files = []
    for index, (arrays, count) in enumerate(pairs):
        path = tmp_path / f"update-{index}.safetensors"
        path.write_bytes(to_safetensors(arrays))
        files.append((path, count))
    for config in (TrimmedMean(trim_fraction=0.2), Median(), FedAvg(norm_bound_factor=1.0)):
        in_memory = aggregate(config, base=base, updates=from_memory(pairs), chunk_elements=4)
        with mapped_updates(files) as updates:
            mapped = aggregate(config, base=base, updates=updates, chunk_elements=4)
        assert updates == []  # views released with the block
        for name in base:
            assert mapped.weights[name].tobytes() == in_memory.weights[name].tobytes()
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(IntegrityError), mapped_updates([(tmp_path / "bad.safetensors", 1)]):
        pass


# --- server optimisers ---------------------------------------------------------------


def _optimiser_reference(
    config: FedAvgM | FedAdam | FedYogi, base: Arrays, means: list[Arrays]
) -> Arrays:
    """Reddi et al. 2021, Algorithm 2, in float64, round by round."""
    weights = {n: a.astype(np.float64) for n, a in base.items()}
    m = {n: np.zeros_like(a) for n, a in weights.items()}
    tau = getattr(config, "tau", 0.0)
    v = {n: np.full_like(a, tau**2) for n, a in weights.items()}
    for mean in means:
        for name in weights:
            d = mean[name].astype(np.float64)
            if isinstance(config, FedAvgM):
                m[name] = config.momentum * m[name] + d
                weights[name] = weights[name] + config.server_learning_rate * m[name]
                continue
            m[name] = config.beta1 * m[name] + (1 - config.beta1) * d
            if isinstance(config, FedYogi):
                v[name] = v[name] - (1 - config.beta2) * d**2 * np.sign(v[name] - d**2)
            else:
                v[name] = config.beta2 * v[name] + (1 - config.beta2) * d**2
            weights[name] = weights[name] + config.server_learning_rate * m[name] / (
                np.sqrt(v[name]) + config.tau
            )
    return weights


OPTIMISERS = [
    FedAvgM(server_learning_rate=0.7, momentum=0.9),
    FedAdam(server_learning_rate=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
    FedYogi(server_learning_rate=0.05, beta1=0.8, beta2=0.95, tau=1e-2),
]


@pytest.mark.parametrize("config", OPTIMISERS, ids=lambda c: c.strategy)
def test_server_optimisers_over_several_rounds_match_the_paper(
    config: FedAvgM | FedAdam | FedYogi,
) -> None:
    base = _arrays(40)
    weights, state, means = base, None, []
    for round_number in range(5):
        pairs = [(_arrays(100 * round_number + i, 0.05), 3 + i) for i in range(3)]
        means.append(
            _weighted_reference(
                {n: np.zeros(s) for n, s in SHAPES.items()}, [d for d, _ in pairs], [3.0, 4.0, 5.0]
            )
        )
        result = aggregate(config, base=weights, updates=from_memory(pairs), state=state)
        weights, state = result.weights, result.state
        assert state is not None and state.step == round_number + 1
    _close(weights, _optimiser_reference(config, base, means), atol=1e-4)


@pytest.mark.parametrize("config", OPTIMISERS, ids=lambda c: c.strategy)
def test_server_state_round_trips_through_bytes_mid_run(
    config: FedAvgM | FedAdam | FedYogi,
) -> None:
    """Stop after round 2, persist, reload: round 3 is bit-identical to an unbroken run."""
    base = _arrays(50)
    rounds = [[(_arrays(10 * r + i, 0.05), 4) for i in range(3)] for r in range(3)]
    spec = spec_of(base)
    unbroken_w, unbroken_s = base, None
    for pairs in rounds:
        result = aggregate(config, base=unbroken_w, updates=from_memory(pairs), state=unbroken_s)
        unbroken_w, unbroken_s = result.weights, result.state
    w, s = base, None
    for pairs in rounds[:2]:
        result = aggregate(config, base=w, updates=from_memory(pairs), state=s)
        w, s = result.weights, result.state
    assert s is not None
    restored = load_state(bytes(s.to_bytes()), config, spec)
    assert restored.step == 2
    final = aggregate(config, base=w, updates=from_memory(rounds[2]), state=restored)
    for name in base:
        assert final.weights[name].tobytes() == unbroken_w[name].tobytes()


def test_server_state_refuses_another_model_or_strategy() -> None:
    spec = spec_of(_arrays(0))
    data = new_state(FedAdam(), spec).to_bytes()
    with pytest.raises(TensorError):
        load_state(data, FedAvgM(), spec)
    with pytest.raises(TensorError):
        load_state(data, FedAdam(), spec[:-1])
    with pytest.raises(IntegrityError):
        load_state(data[:-3], FedAdam(), spec)
    state = new_state(FedAdam(), spec)
    with pytest.raises(TensorError):
        server_step(FedYogi(), state, {})


def test_fedavgm_without_momentum_at_rate_one_is_fedavg() -> None:
    base = _arrays(60)
    pairs = [(_arrays(61 + i, 0.1), 2 + i) for i in range(4)]
    plain = aggregate(FedAvg(), base=base, updates=from_memory(pairs))
    momentum = aggregate(
        FedAvgM(server_learning_rate=1.0, momentum=0.0), base=base, updates=from_memory(pairs)
    )
    _close(momentum.weights, plain.weights, atol=1e-6)


def test_site_update_is_a_plain_record() -> None:
    update = SiteUpdate(arrays=_arrays(0), num_samples=3)
    assert from_memory([(update.arrays, 3)]) == [update]


def test_apply_delta_keeps_each_tensors_dtype() -> None:
    from server.services.strategies import apply_delta
    from shared.arrays import BFLOAT16, bfloat16_to_float32, float32_to_bfloat16

    base = {
        "half": np.array([1.0, 2.0], np.float16),
        "brain": float32_to_bfloat16(np.array([1.0, -2.0], np.float32)),
        "count": np.array([3], np.int64),
    }
    change = {
        "half": np.array([0.5, 0.25], np.float32),
        "brain": np.array([0.5, 1.0], np.float32),
        "count": np.array([1.6]),
    }
    out = apply_delta(base, change)
    assert out["half"].dtype == np.float16 and out["half"].tolist() == [1.5, 2.25]
    assert out["brain"].dtype == BFLOAT16
    assert bfloat16_to_float32(out["brain"]).tolist() == [1.5, -1.0]
    assert out["count"].tolist() == [5]
    with pytest.raises(TensorError):
        apply_delta(base, {"half": change["half"]})
    with pytest.raises(TensorError):
        apply_delta(base, {**change, "count": np.array([1.0, 2.0])})
