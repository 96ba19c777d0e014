"""The strategy close reads stored updates lazily: one decrypted update at a time."""

from __future__ import annotations

import numpy as np

from server.services.closing import StoredUpdates, uses_live_sum
from server.services.strategies import aggregate, from_memory
from shared.aggregation import FedAdam, FedAvg, FedProx, Median, TrimmedMean
from shared.arrays import Arrays

BASE: Arrays = {"w": np.zeros((3, 4), dtype=np.float32), "b": np.ones(4, dtype=np.float32)}


def _deltas(count: int) -> dict[str, Arrays]:
    rng = np.random.default_rng(0)
    return {
        f"blob-{index}": {
            name: rng.standard_normal(array.shape).astype(np.float32)
            for name, array in BASE.items()
        }
        for index in range(count)
    }


class _Opener:
    """Records each blob it opens (a decryption, in the server)."""

    def __init__(self, deltas: dict[str, Arrays]) -> None:
        self.deltas = deltas
        self.opened: list[str] = []

    def __call__(self, blob: str) -> Arrays:
        self.opened.append(blob)
        return {name: array.copy() for name, array in self.deltas[blob].items()}


def test_counts_are_read_without_decrypting_and_each_item_opens_anew() -> None:
    opener = _Opener(_deltas(3))
    updates = StoredUpdates([("blob-0", 4), ("blob-1", 5), ("blob-2", 6)], opener)
    assert [update.num_samples for update in updates] == [4, 5, 6]
    assert opener.opened == []
    assert np.array_equal(updates[1].arrays["w"], opener.deltas["blob-1"]["w"])
    assert np.array_equal(updates[-1].arrays["b"], opener.deltas["blob-2"]["b"])
    assert [item.num_samples for item in updates[1:]] == [5, 6]
    assert opener.opened == ["blob-1", "blob-2"]


def test_the_mean_family_opens_each_update_once_and_the_result_matches_memory() -> None:
    deltas = _deltas(4)
    counts = [1, 2, 3, 4]
    stored = list(zip(deltas, counts, strict=True))
    config = FedAdam(weighting="equal")
    opener = _Opener(deltas)
    lazy = aggregate(config, base=BASE, updates=StoredUpdates(stored, opener))
    assert opener.opened == list(deltas)  # once each, in row order
    eager = aggregate(
        config, base=BASE, updates=from_memory(list(zip(deltas.values(), counts, strict=True)))
    )
    for name in BASE:
        np.testing.assert_array_equal(lazy.weights[name], eager.weights[name])
    bounded = _Opener(deltas)
    aggregate(FedAvg(norm_bound_factor=1.0), base=BASE, updates=StoredUpdates(stored, bounded))
    assert len(bounded.opened) == 2 * len(deltas)  # norms first, then the sum


def test_the_robust_strategies_read_every_update_once() -> None:
    deltas = _deltas(5)
    stored = [(blob, 10) for blob in deltas]
    for config in (TrimmedMean(trim_fraction=0.2), Median()):
        opener = _Opener(deltas)
        result = aggregate(config, base=BASE, updates=StoredUpdates(stored, opener))
        assert sorted(opener.opened) == sorted(deltas)
        assert result.site_weights == [1.0] * 5


def test_only_fedavg_by_cases_uses_the_live_sum() -> None:
    assert uses_live_sum(FedAvg())
    assert uses_live_sum(FedProx(mu=0.1))
    assert not uses_live_sum(FedAvg(weighting="equal"))
    assert not uses_live_sum(FedProx(norm_bound_factor=2.0))
    assert not uses_live_sum(FedAdam())
    assert not uses_live_sum(Median())
