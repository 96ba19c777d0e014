"""Fair splits: deterministic, at least one validation case, at least ``min_train`` training."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.data import read_held_out, split_ids
from shared.errors import ConfigError

IDS = [f"BraTS_{i:03d}" for i in range(10)]


@pytest.mark.parametrize(("count", "train", "val"), [(2, 1, 1), (3, 2, 1), (4, 3, 1), (10, 8, 2)])
def test_counts_at_the_default_fraction(count: int, train: int, val: int) -> None:
    split = split_ids(IDS[:count], val_fraction=0.2, seed=0)
    assert (len(split.train), len(split.val)) == (train, val)
    assert set(split.train) | set(split.val) == set(IDS[:count])
    assert not set(split.train) & set(split.val)


def test_min_train_and_at_least_one_validation_case() -> None:
    assert len(split_ids(IDS[:4], val_fraction=0.9, seed=0, min_train=3).val) == 1
    assert len(split_ids(IDS[:4], val_fraction=0.9, seed=0).train) == 1
    assert len(split_ids(IDS, val_fraction=0.01, seed=0).val) == 1
    assert len(split_ids(IDS, val_fraction=0.5, seed=0, min_train=8).val) == 2
    one = split_ids(IDS[:1], val_fraction=0.5, seed=0)
    assert one.train == (IDS[0],) and one.val == ()


def test_deterministic_whatever_the_order_and_seeded() -> None:
    split = split_ids(IDS, val_fraction=0.3, seed=1)
    assert split == split_ids(list(reversed(IDS)), val_fraction=0.3, seed=1)
    others = {split_ids(IDS, val_fraction=0.3, seed=s).val for s in range(2, 8)}
    assert others - {split.val}  # another seed gives another split


def test_the_pinned_held_out_list_wins(tmp_path: Path) -> None:
    path = tmp_path / "holdout.txt"
    path.write_text("# our own test set\nBraTS_001\n\nBraTS_007  # hard case\nunknown\n")
    pinned = read_held_out(path)
    split = split_ids(IDS, val_fraction=0.2, seed=0, min_train=9, held_out=pinned)
    assert split.val == ("BraTS_001", "BraTS_007") and split.pinned
    assert len(split.train) == 8
    assert "site-pinned" in split.describe() and "BraTS_007" in split.describe()


def test_an_empty_or_missing_held_out_list_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no case"):
        read_held_out(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="cannot read"):
        read_held_out(tmp_path / "missing.txt")
