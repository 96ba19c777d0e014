"""Streaming FedAvg maths: NumPy reference, permutation invariance, identities, zero weights.

The accumulator works on numpy arrays; the tests build torch tensors and convert
them both ways without a copy (`to_arrays`, `from_arrays`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.services.aggregation import Accumulator
from shared.errors import TensorError
from shared.tensors import Tensors, from_arrays, spec_of, to_arrays

SHAPES = {"conv.weight": (4, 3, 2), "conv.bias": (4,), "norm.weight": (5,)}


def _tensors(seed: int, scale: float = 1.0) -> Tensors:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=generator, dtype=torch.float32) * scale
        for name, shape in SHAPES.items()
    }


def _fedavg(base: Tensors, updates: list[tuple[Tensors, float]]) -> Tensors:
    accumulator = Accumulator(spec_of(base))
    for change, weight in updates:
        accumulator.add(to_arrays(change), weight)
    return from_arrays(accumulator.consensus(to_arrays(base)))


def _reference(base: Tensors, updates: list[tuple[Tensors, float]]) -> dict[str, np.ndarray]:
    total = sum(weight for _, weight in updates)
    return {
        name: base[name].double().numpy()
        + (
            sum(weight * change[name].double().numpy() for change, weight in updates) / total
            if total
            else 0.0
        )
        for name in base
    }


seeds = st.integers(min_value=0, max_value=2**31 - 1)
weights = st.integers(min_value=1, max_value=5000)
updates_strategy = st.lists(st.tuples(seeds, weights), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(base_seed=seeds, updates=updates_strategy)
def test_matches_a_numpy_reference(base_seed: int, updates: list[tuple[int, int]]) -> None:
    base = _tensors(base_seed)
    pairs = [(_tensors(seed, 0.1), float(weight)) for seed, weight in updates]
    result = _fedavg(base, pairs)
    for name, expected in _reference(base, pairs).items():
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=0, atol=1e-6)
        assert result[name].dtype == torch.float32


@settings(max_examples=40, deadline=None)
@given(updates=updates_strategy, data=st.data())
def test_permutation_invariant(updates: list[tuple[int, int]], data: st.DataObject) -> None:
    base = _tensors(0)
    pairs = [(_tensors(seed, 0.1), float(weight)) for seed, weight in updates]
    shuffled = data.draw(st.permutations(pairs))
    first, second = _fedavg(base, pairs), _fedavg(base, list(shuffled))
    for name in base:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, weight_list=st.lists(weights, min_size=1, max_size=8))
def test_identical_updates_give_themselves(seed: int, weight_list: list[int]) -> None:
    base = _tensors(1)
    change = _tensors(seed, 0.1)
    result = _fedavg(base, [(change, float(weight)) for weight in weight_list])
    for name in base:
        torch.testing.assert_close(result[name], base[name] + change[name], rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(updates=updates_strategy, zero_seeds=st.lists(seeds, min_size=1, max_size=4))
def test_zero_weight_sites_change_nothing(
    updates: list[tuple[int, int]], zero_seeds: list[int]
) -> None:
    base = _tensors(2)
    pairs = [(_tensors(seed, 0.1), float(weight)) for seed, weight in updates]
    with_zeros = pairs + [(_tensors(seed, 100.0), 0.0) for seed in zero_seeds]
    plain, padded = _fedavg(base, pairs), _fedavg(base, with_zeros)
    for name in base:
        assert torch.equal(plain[name], padded[name])


def test_no_weight_at_all_keeps_the_base() -> None:
    base = _tensors(3)
    result = _fedavg(base, [(_tensors(4), 0.0)])
    for name in base:
        assert torch.equal(result[name], base[name])


def test_integer_tensors_are_rounded_like_apply_delta() -> None:
    base = {"steps": torch.tensor([10, 20], dtype=torch.int64), "w": torch.zeros(2)}
    accumulator = Accumulator(spec_of(base))
    accumulator.add(to_arrays({"steps": torch.tensor([1, 2]), "w": torch.ones(2)}), 1.0)
    accumulator.add(to_arrays({"steps": torch.tensor([2, 4]), "w": torch.ones(2)}), 1.0)
    result = from_arrays(accumulator.consensus(to_arrays(base)))
    assert result["steps"].tolist() == [12, 23] and result["steps"].dtype == torch.int64


def test_refuses_other_names_and_negative_weights() -> None:
    base = _tensors(5)
    accumulator = Accumulator(spec_of(base))
    with pytest.raises(TensorError):
        accumulator.add(to_arrays({"other": torch.zeros(1)}), 1.0)
    with pytest.raises(TensorError):
        accumulator.add(to_arrays(_tensors(6)), -1.0)


def test_consensus_keeps_the_sum_so_a_failed_close_can_compute_it_again() -> None:
    base = _tensors(5)
    accumulator = Accumulator(spec_of(base))
    accumulator.add(to_arrays(_tensors(6)), 2.0)
    accumulator.add(to_arrays(_tensors(8)), 3.0)
    first = accumulator.consensus(to_arrays(base))
    second = accumulator.consensus(to_arrays(base))
    assert set(first) == set(second) == set(base)
    for name in base:
        assert first[name].dtype == second[name].dtype
        assert (first[name] == second[name]).all()


def test_base_is_only_read() -> None:
    base = _tensors(7)
    copy = {name: tensor.clone() for name, tensor in base.items()}
    _fedavg(base, [(_tensors(8), 2.0)])
    for name in base:
        assert torch.equal(base[name], copy[name])


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float16, 1e-3), (torch.bfloat16, 1e-2), (torch.float64, 1e-6)]
)
def test_other_float_dtypes_sum_in_float32_like_torch(dtype: torch.dtype, tolerance: float):
    base = {name: tensor.to(dtype) for name, tensor in _tensors(9).items()}
    pairs = [
        ({name: tensor.to(dtype) for name, tensor in _tensors(seed, 0.1).items()}, weight)
        for seed, weight in ((1, 3.0), (2, 5.0))
    ]
    result = _fedavg(base, pairs)
    for name in base:
        total = torch.zeros(base[name].shape)
        for change, weight in pairs:
            total.add_(change[name].float(), alpha=weight)
        expected = (total * (1 / 8.0) + base[name].float()).to(dtype)
        assert result[name].dtype == dtype
        torch.testing.assert_close(result[name], expected, rtol=tolerance, atol=1e-6)
